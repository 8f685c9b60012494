"""The kernel backend switch: settings, scoping, auto dispatch and clear errors (runs without kernels too)."""
from __future__ import annotations

import pytest
import torch

from editx.errors import BackendUnavailableError, InvalidInputError
from editx.kernels import _triton
from editx.kernels import rms_norm as rms_kernels
from editx.layers import OPS, get_kernel_backend, kernel_backend, set_kernel_backend
from editx.layers.backend import use_triton
from editx.layers.norms import rms_norm


def test_every_op_defaults_to_auto_and_settings_are_scoped():
    assert all(get_kernel_backend(op) == "auto" for op in OPS)
    with kernel_backend("reference"):
        assert all(get_kernel_backend(op) == "reference" for op in OPS)
        with kernel_backend("triton", "swiglu"):
            assert get_kernel_backend("swiglu") == "triton" and get_kernel_backend("rms_norm") == "reference"
        assert get_kernel_backend("swiglu") == "reference"
    assert all(get_kernel_backend(op) == "auto" for op in OPS)


def test_set_kernel_backend_is_process_wide_until_reset():
    try:
        set_kernel_backend("reference", "adaln")
        assert get_kernel_backend("adaln") == "reference"
    finally:
        set_kernel_backend("auto")
    assert get_kernel_backend("adaln") == "auto"


def test_settings_survive_an_exception_inside_the_scope():
    with pytest.raises(RuntimeError), kernel_backend("triton"):
        raise RuntimeError("boom")
    assert all(get_kernel_backend(op) == "auto" for op in OPS)


def test_unknown_names_raise():
    with pytest.raises(InvalidInputError, match="backend"):
        set_kernel_backend("cuda")
    with pytest.raises(InvalidInputError, match="op"):
        set_kernel_backend("auto", "flash")
    with pytest.raises(InvalidInputError, match="op"):
        get_kernel_backend("flash")
    with pytest.raises(InvalidInputError, match="backend"):
        rms_norm(torch.ones(2, 4), torch.ones(4), 1e-5, backend="fast")


def test_auto_runs_the_reference_on_cpu_tensors():
    assert not use_triton("rms_norm", torch.device("cpu"), "auto", None, rms_kernels._rms_norm_kernel)
    x, w = torch.randn(3, 8), torch.randn(8)
    torch.testing.assert_close(rms_norm(x, w, 1e-5), rms_kernels.rms_norm_ref(x, w, 1e-5), rtol=0, atol=0)


def test_forced_triton_names_why_it_cannot_run():
    with kernel_backend("triton", "rms_norm"), pytest.raises(BackendUnavailableError, match="rms_norm.*because"):
        use_triton("rms_norm", torch.device("cpu"), unsupported="because of a test")


class _CompiledStandIn:
    """Looks like a compiled (not interpreted) Triton kernel."""


@pytest.mark.skipif(not _triton.HAS_TRITON, reason="Triton is not installed")
def test_a_compiled_kernel_cannot_launch_on_cpu_tensors():
    reason = _triton.launchable(_CompiledStandIn(), torch.device("cpu"))
    assert reason is not None and "TRITON_INTERPRET=1" in reason
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET"):
        _triton.require_launchable(_CompiledStandIn(), torch.device("cpu"), "test kernel")


def test_auto_skips_a_kernel_measured_slower_but_forcing_still_runs_it(monkeypatch):
    """`slower=True` (e.g. fp32 DiT attention on CUDA): auto picks the reference, "triton" still runs it."""
    monkeypatch.setattr(_triton, "launchable", lambda kernel, device: None)  # pretend it can launch
    cuda = torch.device("cuda")  # (only the type is read; no GPU needed)
    assert use_triton("dit_attention", cuda, "auto", None, object())
    assert not use_triton("dit_attention", cuda, "auto", None, object(), slower=True)
    with kernel_backend("triton", "dit_attention"):
        assert use_triton("dit_attention", cuda, "auto", None, object(), slower=True)
