"""Shared setup of the kernel tests: where kernels can run, shape sets, tolerances, the error-budget rule.

Kernels run either on CUDA (compiled Triton) or, on a CPU machine, in Triton's interpreter,
which must be switched on before the kernel modules are imported:

    TRITON_INTERPRET=1 python -m pytest -q tests/kernels

Without either every kernel test skips with that reason. The interpreter is slow (numpy per
program), so it gets small shapes; CUDA gets the real model dims as well.
"""
from __future__ import annotations

import pytest
import torch

from editx.kernels import _triton

INTERPRETED = _triton.HAS_TRITON and bool(_triton.triton.knobs.runtime.interpret)
ON_CUDA = _triton.HAS_TRITON and not INTERPRETED and torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_CUDA else "cpu")

if not _triton.HAS_TRITON:
    _REASON = "Triton is not installed (pip install -e '.[dev]')"
elif not (INTERPRETED or ON_CUDA):
    _REASON = "Triton kernels need CUDA or the interpreter: run with TRITON_INTERPRET=1 set before pytest starts"
else:
    _REASON = ""

needs_kernels = pytest.mark.skipif(not (INTERPRETED or ON_CUDA), reason=_REASON)

# The interpreter has no bf16 arithmetic of its own: the kernels convert to fp32 (see kernels/_triton.py),
# so all three dtypes run in both modes.
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def big(interpreted_value, cuda_value):
    """Pick a shape parameter: small under the interpreter, the real size on CUDA."""
    return cuda_value if ON_CUDA else interpreted_value


def randn(*shape, dtype=torch.float32, generator=None, scale=1.0) -> torch.Tensor:
    """Gaussian test data drawn on the CPU in fp32 (same values in every mode), then moved/cast."""
    return (torch.randn(*shape, generator=generator) * scale).to(device=DEVICE, dtype=dtype)


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a - b|, compared in fp64 on the CPU (fp64 truths are computed there)."""
    return float((a.detach().cpu().double() - b.detach().cpu().double()).abs().max()) if a.numel() else 0.0


def check_error_budget(kernel_out: torch.Tensor, reference_out: torch.Tensor, truth: torch.Tensor,
                       what: str) -> None:
    """Attention rule: the kernel's error against fp64 truth is at most twice the error of the torch
    reference run in the same (low) precision on the same inputs.

    An absolute floor of 2 units in the last place of the output magnitude keeps the rule
    meaningful when the reference happens to be (near) exact: both are rounded to the output
    dtype at the end, so neither can be closer than half a unit.
    """
    eps = torch.finfo(kernel_out.dtype).eps
    floor = 2 * eps * float(truth.abs().max())
    err_kernel = max_err(kernel_out, truth)
    err_ref = max_err(reference_out, truth)
    assert err_kernel <= 2 * err_ref + floor, (
        f"{what}: kernel error {err_kernel:.3g} vs fp64 exceeds 2 x reference error {err_ref:.3g} "
        f"(+ floor {floor:.3g})")
