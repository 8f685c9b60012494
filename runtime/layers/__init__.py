"""editx.layers: building blocks that dispatch between Triton kernels and PyTorch references.

`set_kernel_backend("triton" | "reference" | "auto", op=None)` selects the implementation
process-wide (see `backend.py`); "auto" (the default) runs Triton on CUDA tensors.
"""
from .backend import BACKENDS, OPS, get_kernel_backend, kernel_backend, set_kernel_backend

__all__ = ["BACKENDS", "OPS", "get_kernel_backend", "kernel_backend", "set_kernel_backend"]
