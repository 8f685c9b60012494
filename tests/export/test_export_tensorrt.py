"""TensorRT: plan-cache keys, profile selection, the fp32 fallback policy and availability errors
(pure logic, no TensorRT needed); the builder's call sequence against a stand-in module; and a
real engine build + run where tensorrt and a CUDA device exist (skipped elsewhere, saying why)."""
from __future__ import annotations

import sys
import types
from dataclasses import replace

import pytest
import torch

from editx.errors import BackendUnavailableError, CheckpointError, InvalidInputError
from editx.export import tensorrt as trt_mod
from editx.export.graphs import GRAPHS, graph_spec
from editx.export.tensorrt import (DEFAULT_RANGES, PlanCache, PlanKey, ShapeProfile, build_plan, default_profiles,
                                   keep_fp32, select_profile)
from export_support import TINY, exported, source_model


def _profile(graph: str = "dit", **sizes) -> ShapeProfile:
    return ShapeProfile.from_sizes(graph_spec(graph), source_model(TINY, graph), sizes)


def _key(**changes) -> PlanKey:
    base = PlanKey("dit", "ab" * 32, "NVIDIA H100 80GB HBM3 (sm_90)", "10.3.0", "fp16",
                   (_profile(frames=(8, 512, 1024)),))
    return replace(base, **changes)


# -- plan cache keys --------------------------------------------------------------------
def test_plan_key_is_stable_and_changes_with_every_field():
    assert _key().digest == _key().digest and _key().filename.startswith("dit-fp16-")
    variants = [_key(onnx_sha256="cd" * 32), _key(gpu_name="NVIDIA H200 (sm_90)"), _key(trt_version="10.4.0"),
                _key(precision="bf16"), _key(profiles=(_profile(frames=(8, 256, 1024)),)),
                _key(policy_version=trt_mod.FP32_POLICY_VERSION + 1), _key(graph="dit_chunk")]
    digests = {v.digest for v in variants}
    assert len(digests) == len(variants) and _key().digest not in digests


def test_plan_key_validates():
    with pytest.raises(InvalidInputError, match="precision"):
        _key(precision="int8")
    with pytest.raises(InvalidInputError, match="profile"):
        _key(profiles=())


def test_plan_cache_builds_once_and_rejects_foreign_sidecars(tmp_path):
    cache, key, calls = PlanCache(tmp_path), _key(), []

    def build() -> bytes:
        calls.append(1)
        return b"plan-bytes"

    assert cache.get_or_build(key, build) == b"plan-bytes"
    assert cache.get_or_build(key, build) == b"plan-bytes" and len(calls) == 1
    assert cache.load(_key(trt_version="10.9.0")) is None  # another TensorRT: not this plan
    cache.path(key).with_suffix(".json").write_text('{"graph": "dit"}')  # a key that does not match
    assert cache.load(key) is None
    assert not list(tmp_path.glob("*.tmp*"))


# -- profiles ---------------------------------------------------------------------------
def test_profile_shapes_follow_the_graph_signature():
    p = _profile(frames=(8, 512, 1024))
    shapes = {name: (lo, opt, hi) for name, lo, opt, hi in p.shapes}
    assert list(shapes) == list(graph_spec("dit").inputs)
    assert shapes["x"] == ((2, 80, 8), (2, 80, 512), (2, 80, 1024)) and shapes["t"] == ((2,), (2,), (2,))
    chunk = _profile("dit_chunk", frames=(2, 102, 256), cached=(0, 1200, 2048))
    dims = {name: (lo, hi) for name, lo, _, hi in chunk.shapes}
    assert dims["cache_k"][0][3] == 0 and dims["cache_k"][1][3] == 2048


@pytest.mark.parametrize("sizes, match", [({"frames": (8, 4, 16)}, "min <= opt <= max"),
                                          ({"length": (1, 2, 3)}, "expected"), ({}, "expected")])
def test_bad_profile_ranges(sizes, match):
    with pytest.raises(InvalidInputError, match=match):
        _profile(**sizes)


def test_select_profile_picks_the_tightest_that_fits():
    dit = source_model(TINY, "dit")
    small, large = _profile(frames=(8, 512, 1024)), _profile(frames=(1024, 2048, 4096))
    wide = _profile(frames=(1, 2048, 4096))
    profiles = [wide, large, small]

    def shapes(frames: int) -> dict:
        return graph_spec("dit").input_shapes(dit, 2, frames=frames)

    assert select_profile(profiles, shapes(300)) == 2
    assert select_profile(profiles, shapes(1024)) == 2  # both bounds are inclusive
    assert select_profile(profiles, shapes(3000)) == 1
    assert select_profile(profiles, shapes(3)) == 0
    with pytest.raises(InvalidInputError, match="fit no TensorRT profile"):
        select_profile(profiles, shapes(5000))
    with pytest.raises(InvalidInputError, match="fit no"):
        select_profile([small], graph_spec("dit").input_shapes(dit, 3, frames=300))  # batch 3 ≠ CFG pair


def test_default_ranges_cover_every_graph():
    assert set(DEFAULT_RANGES) == set(GRAPHS)
    for name in GRAPHS:
        assert default_profiles(graph_spec(name), source_model(TINY, name))


# -- precision policy -------------------------------------------------------------------
@pytest.mark.parametrize("name, kind, fp32", [
    ("/dit/blocks.0/attn/Softmax", "LayerType.SOFTMAX", True),
    ("/dit/blocks.3/LayerNormalization", "LayerType.NORMALIZATION", True),
    ("/encoder/after_norm/ReduceMean", "LayerType.REDUCE", True),
    ("/dit/t_embedder/Mul_1", "LayerType.ELEMENTWISE", True),         # t·1000 sinusoid argument
    ("/dit/blocks.0/mlp/Pow", "LayerType.ELEMENTWISE", True),         # GELU-tanh's x³
    ("/hift/Exp", "LayerType.UNARY", True),                           # magnitude head
    ("/istft/ConvTranspose", "LayerType.DECONVOLUTION", True),        # waveform overlap-add
    ("/Sin_3", "LayerType.UNARY", True),                              # vq02 position encoding
    ("/dit/blocks.0/attn/to_q/MatMul", "LayerType.MATRIX_MULTIPLY", False),
    ("/hift/ups.0/ConvTranspose", "LayerType.DECONVOLUTION", False),
    ("/dit/blocks.0/Add_2", "LayerType.ELEMENTWISE", False),
    ("/encoder/Expand_3", "LayerType.SLICE", False),                  # "Expand" is not "Exp"
    ("/x/LogSoftmax", "LayerType.UNARY", False),
])
def test_fp32_policy(name, kind, fp32):
    assert keep_fp32(name, kind) is fp32


# -- availability -----------------------------------------------------------------------
def test_missing_tensorrt_is_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import raises ImportError
    with pytest.raises(BackendUnavailableError, match="tensorrt Python package is not installed"):
        trt_mod.import_tensorrt()


def test_old_tensorrt_is_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.1"))
    with pytest.raises(BackendUnavailableError, match=">= 10"):
        trt_mod.import_tensorrt()


def test_tensorrt_needs_cuda():
    with pytest.raises(BackendUnavailableError, match="CUDA"):
        trt_mod.require_tensorrt(torch.device("cpu"))


# -- the builder against a stand-in of the tensorrt module -----------------------------
class _Enum:
    def __init__(self, prefix: str, names: str) -> None:
        for n in names.split():
            setattr(self, n, f"{prefix}.{n}")


def fake_tensorrt(layers, parse_ok: bool = True, build_ok: bool = True):
    """The subset of the TensorRT 10 Python API `build_plan` uses, recording every call."""
    trt = types.SimpleNamespace(__version__="10.3.0", float32="f32", float16="f16", bfloat16="bf16", int64="i64",
                                calls=[])
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.MemoryPoolType = _Enum("MemoryPoolType", "WORKSPACE")
    trt.BuilderFlag = _Enum("BuilderFlag", "FP16 BF16 OBEY_PRECISION_CONSTRAINTS")

    class Network:
        num_layers = len(layers)

        def get_layer(self, i):
            return layers[i]

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            trt.calls.append(("set_shape", name, tuple(lo), tuple(opt), tuple(hi)))

    class Config:
        def set_memory_pool_limit(self, pool, size):
            trt.calls.append(("pool", pool, size))

        def set_flag(self, flag):
            trt.calls.append(("flag", flag))

        def add_optimization_profile(self, profile):
            trt.calls.append(("add_profile",))

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            trt.calls.append(("create_network", flags))
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"serialized" if build_ok else None

    class OnnxParser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger):
            pass

        def parse(self, data):
            trt.calls.append(("parse", len(data)))
            return parse_ok

        def get_error(self, i):
            return "unsupported op Foo"

    trt.Builder, trt.OnnxParser = Builder, OnnxParser
    return trt


class _Layer:
    def __init__(self, name, kind, dtypes):
        self.name, self.type, self._dtypes = name, kind, list(dtypes)
        self.precision, self.output_types = None, {}
        self.num_outputs = len(dtypes)

    def get_output(self, j):
        return types.SimpleNamespace(dtype=self._dtypes[j])

    def set_output_type(self, j, dtype):
        self.output_types[j] = dtype


def test_build_plan_call_sequence(monkeypatch):
    layers = [_Layer("/dit/blocks.0/attn/Softmax", "LayerType.SOFTMAX", ["f16"]),
              _Layer("/dit/blocks.0/attn/to_q/MatMul", "LayerType.MATRIX_MULTIPLY", ["f16"]),
              _Layer("/Shape_3/ReduceProd", "LayerType.REDUCE", ["i64"])]  # shape arithmetic: untouched
    fake = fake_tensorrt(layers)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    profiles = [_profile(frames=(8, 512, 1024)), _profile(frames=(1024, 2048, 4096))]
    onnx = exported(TINY, "dit").onnx
    assert build_plan(onnx, profiles, "fp16", workspace_bytes=1 << 30, what="dit") == b"serialized"
    assert ("create_network", 0) in fake.calls and ("parse", len(onnx)) in fake.calls
    assert ("pool", "MemoryPoolType.WORKSPACE", 1 << 30) in fake.calls
    assert {c[1] for c in fake.calls if c[0] == "flag"} == {"BuilderFlag.FP16", "BuilderFlag.OBEY_PRECISION_CONSTRAINTS"}
    set_shapes = [c for c in fake.calls if c[0] == "set_shape"]
    assert len(set_shapes) == 2 * len(graph_spec("dit").inputs) and fake.calls.count(("add_profile",)) == 2
    assert set_shapes[0] == ("set_shape", "x", (2, 80, 8), (2, 80, 512), (2, 80, 1024))
    assert layers[0].precision == "f32" and layers[0].output_types == {0: "f32"}
    assert layers[1].precision is None and layers[2].precision is None


def test_build_plan_fp32_sets_no_precision_flags(monkeypatch):
    layers = [_Layer("/dit/blocks.0/attn/Softmax", "LayerType.SOFTMAX", ["f32"])]
    fake = fake_tensorrt(layers)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    build_plan(b"onnx", [_profile(frames=(8, 16, 32))], "fp32")
    assert not [c for c in fake.calls if c[0] == "flag"] and layers[0].precision is None


def test_build_plan_errors_name_the_graph(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt([], parse_ok=False))
    with pytest.raises(CheckpointError, match="parse the dit .*unsupported op Foo"):
        build_plan(b"onnx", [_profile(frames=(8, 16, 32))], "fp16", what="dit")
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt([], build_ok=False))
    with pytest.raises(CheckpointError, match="failed to build .*dit"):
        build_plan(b"onnx", [_profile(frames=(8, 16, 32))], "fp16", what="dit")
    with pytest.raises(InvalidInputError, match="precision"):
        build_plan(b"onnx", [_profile(frames=(8, 16, 32))], "int8")


# -- the real thing ---------------------------------------------------------------------
def _tensorrt_missing() -> str | None:
    if not torch.cuda.is_available():
        return "TensorRT engines need a CUDA device; this machine has none"
    try:
        trt_mod.import_tensorrt()
    except BackendUnavailableError as exc:
        return str(exc)
    return None


@pytest.mark.gpu
@pytest.mark.skipif(_tensorrt_missing() is not None, reason=str(_tensorrt_missing()))
@pytest.mark.parametrize("precision, rel_tol", [("fp32", 1e-3), ("fp16", 5e-2)])
@pytest.mark.parametrize("graph", ["dit", "dit_chunk", "hift_decode", "vq02_chunk"])
def test_tensorrt_engine_matches_torch(graph, precision, rel_tol, tmp_path):
    """Build (through the plan cache) and run a dummy:tiny engine; compare with torch float32.

    fp32: TF32 may be used by TensorRT's matmuls, 1e-3 of scale. fp16 with fp32 fallback layers:
    5e-2 of scale, and every value finite (the failure peers saw was NaN / silence)."""
    from editx.export.tensorrt import TrtGraph, gpu_name

    trt = trt_mod.import_tensorrt()
    device = torch.device("cuda")
    spec, model = graph_spec(graph), source_model(TINY, graph)
    sizes = {k: v for k, v in {"frames": 9, "cached": 5}.items() if k in spec.size_names}
    profiles = [ShapeProfile.from_sizes(spec, model, {k: (0 if k == "cached" else 1, 16, 64) for k in sizes})]
    onnx = exported(TINY, graph).onnx
    key = PlanKey(graph, exported(TINY, graph).sha256, gpu_name(device), trt.__version__, precision, tuple(profiles))
    plan = PlanCache(tmp_path).get_or_build(key, lambda: build_plan(onnx, profiles, precision, what=graph))
    runner = TrtGraph(plan, spec, profiles, device, model)
    inputs = spec.example_inputs(model, seed=1, **sizes)
    with torch.no_grad():
        ref = spec.wrap(model).eval()(*inputs)
    ref = ref if isinstance(ref, tuple) else (ref,)
    got = runner(*[t.to(device) for t in inputs])
    for name, r, g in zip(spec.outputs, ref, got):
        g = g.cpu()
        assert torch.isfinite(g).all(), f"{graph} {precision} {name}: non-finite values"
        assert (g - r).abs().max() <= rel_tol * max(1.0, float(r.abs().max())), f"{graph} {precision} {name}"
