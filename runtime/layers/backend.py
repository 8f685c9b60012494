"""Which implementation each fused op runs: the Triton kernel or its plain-PyTorch reference.

Ops (names used by `set_kernel_backend`):
    "alibi_attention"  Step1 sqrt-ALiBi GQA attention (static cache and paged pool)
    "dit_attention"    DiT q/k-LayerNorm + attention (offline and streaming chunks)
    "embedding"        flow dual-codebook embedding
    "rms_norm"         Step1 RMSNorm (+ residual add)
    "swiglu"           Step1 MLP gate
    "adaln"            DiT LayerNorm + adaLN modulate (+ gated residual)
    "snake"            HiFT's Snake activation x + sin²(αx)/α

Backends: "auto" (Triton for CUDA tensors when Triton is installed and the kernel supports
the call; the reference otherwise), "reference", "triton" (always the kernel; on CPU tensors
that needs Triton's interpreter, TRITON_INTERPRET=1 set before editx is imported; an
unsupported call raises instead of falling back).

The choice is process-wide (`set_kernel_backend`, or the `kernel_backend` context manager
for a scope); a call site may also pass an explicit backend, which wins over "auto".
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from ..errors import BackendUnavailableError, InvalidInputError

BACKENDS = ("auto", "reference", "triton")
OPS = ("alibi_attention", "dit_attention", "embedding", "rms_norm", "swiglu", "adaln", "snake")

_choice: dict[str, str] = {op: "auto" for op in OPS}


def _check_op(op: str) -> None:
    if op not in OPS:
        raise InvalidInputError(f"op: unknown kernel op {op!r}; use one of {OPS}")


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise InvalidInputError(f"backend: {backend!r}; use one of {BACKENDS}")


def set_kernel_backend(backend: str, op: str | None = None) -> None:
    """Select the backend of one op, or of every op when `op` is None (process-wide)."""
    _check_backend(backend)
    if op is None:
        for name in OPS:
            _choice[name] = backend
    else:
        _check_op(op)
        _choice[op] = backend


def get_kernel_backend(op: str) -> str:
    """The process-wide backend setting of `op` ("auto", "reference" or "triton")."""
    _check_op(op)
    return _choice[op]


@contextlib.contextmanager
def kernel_backend(backend: str, op: str | None = None) -> Iterator[None]:
    """Context manager: `set_kernel_backend(backend, op)` for the scope, then restore the previous settings."""
    saved = dict(_choice)
    set_kernel_backend(backend, op)
    try:
        yield
    finally:
        _choice.update(saved)


def use_triton(op: str, device: torch.device, backend: str = "auto", unsupported: str | None = None,
               kernel=None, slower: bool = False) -> bool:
    """Resolve one call: True to run the Triton kernel, False for the reference.

    backend: the call site's choice ("auto" defers to the process-wide setting); unsupported:
    why the kernel cannot run this call (None if it can); kernel: the Triton function, to
    check it can launch on `device` (interpreter or CUDA); slower: the kernel runs this call but is
    measured slower than the reference, so "auto" picks the reference (forcing "triton" still runs it).
    """
    _check_backend(backend)
    choice = _choice[op] if backend == "auto" else backend
    if choice == "reference":
        return False
    from editx.kernels._triton import launchable  # imported here: Triton stays optional

    reason = unsupported or launchable(kernel, torch.device(device))
    if choice == "auto":
        return reason is None and not slower and torch.device(device).type == "cuda"
    if reason is not None:
        raise BackendUnavailableError(f"{op}: the Triton backend was forced but cannot run this call: {reason}")
    return True
