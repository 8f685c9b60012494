"""Shared plumbing of the Triton kernels: optional import, launch checks, small helpers.

Triton is optional (a `dev`/GPU dependency): without it every kernel module still imports and
its plain-PyTorch reference works; only the launchers raise `BackendUnavailableError`.

The Triton interpreter (`TRITON_INTERPRET=1`, read by Triton when the kernels are decorated,
i.e. before `editx.kernels.*` is first imported) runs kernels on CPU tensors with numpy. It
stores bfloat16 as raw uint16 and its `tl.dot` multiplies those raw integers, so kernels
upcast 16-bit `tl.dot` operands to fp32 when interpreted (`UPCAST_DOT`); products of bf16/fp16
values are exact in fp32 and the GPU's MMA also accumulates in fp32, so both paths compute the
same sums up to accumulation order. Every other bf16 value is converted to fp32 before any
arithmetic (in the kernels, on any device). Three interpreter shims below (applied only when the
interpreter is on) fix a NumPy ≥ 2.4 incompatibility, its truncating fp32 → bf16 cast, and its
thread-unsafety.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from editx.errors import BackendUnavailableError, InvalidInputError

try:  # pragma: no cover - exercised by whichever environment runs the tests
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None
    tl = None

HAS_TRITON = triton is not None
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _patch_interpreter_scalar_index() -> None:
    """Interpreter compatibility with NumPy ≥ 2.4 (no effect on compiled kernels).

    Triton's interpreter keeps scalars as shape-(1,) arrays and converts them with `int(array)`
    when a runtime value bounds a `range` loop; NumPy 2.4 rejects that conversion for arrays
    with ndim > 0. Re-register the tensor `__index__` hook with `.item()`, once per launch, after
    Triton installs its own (Triton restores both when the launch ends).
    """
    from triton.runtime import interpreter

    if getattr(interpreter, "_editx_scalar_index_patched", False):
        return
    original = interpreter._patch_lang_tensor

    def patch(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    interpreter._patch_lang_tensor = patch
    interpreter._editx_scalar_index_patched = True


def _patch_interpreter_bf16_rounding() -> None:
    """Interpreter fidelity: round fp32 → bf16 to nearest-even, as compiled kernels do.

    Triton 3.6's interpreter truncates (rounds toward zero) when it narrows fp32 to bf16
    (explicit `.to(tl.bfloat16)` and the implicit cast of a store), which biases every bf16
    result by up to one unit in the last place; on the GPU the same cast is `fptrunc`, i.e.
    round-to-nearest-even. fp16 is narrowed by numpy, which already rounds to nearest-even.
    """
    import numpy as np
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    if getattr(builder, "_editx_bf16_rounding_patched", False):
        return
    original = builder.create_fp_trunc

    def create_fp_trunc(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            values = np.ascontiguousarray(src.data, dtype=np.float32)
            bits = values.view(np.uint32).astype(np.uint64)
            rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
            nan = np.isnan(values)
            rounded[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)  # keep NaNs quiet NaNs
            return interpreter.TensorHandle(rounded, dst_type.scalar)
        return original(self, src, dst_type)

    builder.create_fp_trunc = create_fp_trunc
    builder._editx_bf16_rounding_patched = True


def _patch_interpreter_serial_launches() -> None:
    """Interpreter thread-safety: one interpreted launch at a time, process-wide.

    A launch patches `triton.language` module-wide for its duration and restores it at the end,
    so two launches on different threads (the engine's LLM step and its decoder worker) undo each
    other's patches mid-kernel ("Did you forget to add @triton.jit?"). Compiled kernels are unaffected.
    """
    import threading

    from triton.runtime import interpreter

    executor = interpreter.GridExecutor
    if getattr(executor, "_editx_serial_patched", False):
        return
    original = executor.__call__
    lock = threading.RLock()  # re-entrant: a launch never nests another, but stay safe if it did

    def call(self, *args, **kwargs):
        with lock:
            return original(self, *args, **kwargs)

    executor.__call__ = call
    executor._editx_serial_patched = True


if HAS_TRITON and triton.knobs.runtime.interpret:  # pragma: no branch
    _patch_interpreter_scalar_index()
    _patch_interpreter_bf16_rounding()
    _patch_interpreter_serial_launches()


def is_interpreted(kernel) -> bool:
    """True when `kernel` was decorated under the Triton interpreter (runs on CPU tensors)."""
    return type(kernel).__name__ == "InterpretedFunction"


def launchable(kernel, device: torch.device) -> str | None:
    """None when `kernel` can run on tensors of `device`, else the reason it cannot."""
    if not HAS_TRITON:
        return "Triton is not installed (pip install triton)"
    if is_interpreted(kernel):
        return None if device.type == "cpu" else (
            f"Triton runs in interpreter mode (TRITON_INTERPRET=1), which needs CPU tensors, got {device}")
    if device.type != "cuda":
        return (f"Triton kernels need CUDA tensors, got {device} (set TRITON_INTERPRET=1 before importing "
                "editx to run them on the CPU in the interpreter)")
    return None


def require_launchable(kernel, device: torch.device, what: str) -> None:
    reason = launchable(kernel, device)
    if reason is not None:
        raise BackendUnavailableError(f"{what}: {reason}")


def check_tensor(x, what: str, dims: int, dtypes=FLOAT_DTYPES, device: torch.device | None = None) -> None:
    """InvalidInputError unless x is a tensor of `dims` dims with a dtype in `dtypes` (on `device`)."""
    if not isinstance(x, torch.Tensor):
        raise InvalidInputError(f"{what}: expected a tensor, got {type(x).__name__}")
    if x.dim() != dims:
        raise InvalidInputError(f"{what}: expected {dims} dims, got shape {tuple(x.shape)}")
    if x.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise InvalidInputError(f"{what}: expected dtype in ({names}), got {x.dtype}")
    if device is not None and x.device != device:
        raise InvalidInputError(f"{what}: on {x.device}, expected {device}")


def check_shape(x: torch.Tensor, what: str, shape: tuple) -> None:
    """InvalidInputError unless x.shape matches `shape` (None = any size)."""
    if x.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape)):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise InvalidInputError(f"{what}: expected shape {want}, got {tuple(x.shape)}")


def check_unit_stride(x: torch.Tensor, what: str) -> None:
    """The kernels vectorise along the last dim: it must be contiguous."""
    if x.shape[-1] > 1 and x.stride(-1) != 1:
        raise InvalidInputError(f"{what}: the last dim must be contiguous (stride 1), got strides {x.stride()}")


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


@lru_cache(maxsize=None)
def sm_count(device_index: int) -> int:
    """Streaming multiprocessors of a CUDA device (host-side property; no device sync)."""
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def rows_per_program(block_cols: int, interpreted: bool) -> int:
    """Rows per program of the row-wise kernels (norms, gates, gathers).

    GPU: ~4096 elements per program (a few registers per thread, many programs in flight).
    Interpreter: up to 64K elements, because there every program costs Python overhead per
    op (~0.1 ms) while numpy handles big tiles almost for free.
    """
    budget, cap = (1 << 16, 1024) if interpreted else (4096, 16)
    return max(1, min(cap, budget // max(1, block_cols)))


def num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 8  # interpreter: any small number; only shapes the split heuristics
    return sm_count(device.index if device.index is not None else torch.cuda.current_device())


def tl_dtype(dtype: torch.dtype):
    """The Triton element type of a torch float dtype."""
    return {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}[dtype]
