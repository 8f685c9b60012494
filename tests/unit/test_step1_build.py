"""`build_step1`: allocation on the target device without module init or meta-tensor refs."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from editx.models import step1
from editx.models.step1 import Step1Config, build_step1


def test_build_allocates_every_tensor_on_the_device_in_the_dtype():
    model = build_step1(Step1Config.tiny(), "cpu", torch.bfloat16)
    tensors = list(model.parameters()) + list(model.buffers())
    assert tensors and all(t.device.type == "cpu" and not t.is_meta for t in tensors)
    assert all(t.dtype == torch.bfloat16 for t in tensors if t.is_floating_point())
    assert not any(p.requires_grad for p in model.parameters())
    assert {k for k, _ in model.named_parameters()} == set(model.state_dict())  # names unchanged


def test_building_imports_neither_dynamo_nor_sympy():
    """The import-time cost this avoids (~3 s of the first load on a 2-core CPU) stays avoided."""
    code = ("import sys, torch; from editx.models.step1 import Step1Config, build_step1; "
            "build_step1(Step1Config.tiny(), 'cpu', torch.float32); "
            "print(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_module_init_is_restored_even_when_the_constructor_fails():
    before = {name: getattr(nn.init, name) for name in step1._INIT_FUNCTIONS}
    with pytest.raises(RuntimeError, match="boom"):
        with step1._without_module_init():
            assert nn.init.normal_ is not before["normal_"]
            raise RuntimeError("boom")
    assert {name: getattr(nn.init, name) for name in step1._INIT_FUNCTIONS} == before
    w = torch.zeros(64)
    nn.init.normal_(w)
    assert w.std() > 0.5  # a real init again


def test_allocate_keeps_tied_tensors_tied_and_buffers_as_buffers():
    with torch.device("meta"):
        model = nn.Sequential(nn.Embedding(7, 5), nn.Linear(5, 7, bias=False))
        model[1].weight = model[0].weight
        model.register_buffer("steps", torch.zeros(3, dtype=torch.long))
    step1._allocate(model, torch.device("cpu"), torch.float16)
    assert model[1].weight is model[0].weight and model[0].weight.dtype == torch.float16
    assert "steps" in dict(model.named_buffers()) and model.steps.dtype == torch.long and not model.steps.is_meta
