"""Runtime backends: config validation, loud errors, the backend objects against the torch calls
they replace (fast path vs reference), model views, and a whole dummy:tiny clone on onnxruntime."""
from __future__ import annotations

import builtins
import dataclasses
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import editx
from editx.config import BACKEND_STAGES, RuntimeConfig, parse_backends
from editx.errors import BackendUnavailableError, CheckpointError, InvalidInputError
from editx.export import ort as ort_module
from editx.export.backends import DiTBackend, apply_backends, method_view, stage_views
from editx.export.graphs import GRAPHS, graph_spec
from editx.export.ort import OrtGraph, providers_for
from editx.export.store import GraphSource, save_graphs
from editx.models.vq02_encoder import SANMStreamingEncoder
from export_support import TINY, exported, models

CPU = torch.device("cpu")
AUDIO = Path(__file__).resolve().parents[2].parent / "shared" / "audio" / "zero_shot_en_prompt.wav"
# Float32 op-order noise of a graph, relative to the output's scale (measured ≤ 2e-6 for every
# graph on dummy:tiny, see editx.export.verify); the backend wrappers must add nothing to it.
SCALE_REL_TOL = 2e-5


def runner(stage: str, graph: str, model):
    return OrtGraph(exported(TINY, graph).onnx, graph_spec(graph), CPU, model)


@pytest.fixture(scope="module")
def views():
    m = models(TINY)
    return SimpleNamespace(**stage_views(m, {s: "onnxruntime" for s in BACKEND_STAGES}, runner))


def close(got: torch.Tensor, ref: torch.Tensor, tol: float = SCALE_REL_TOL) -> bool:
    return got.shape == ref.shape and got.dtype == ref.dtype and \
        float((got.float() - ref.float()).abs().max()) <= tol * max(1.0, float(ref.abs().max()))


# -- config -----------------------------------------------------------------------------
def test_parse_backends_forms():
    assert parse_backends(None) == {s: "torch" for s in BACKEND_STAGES}
    assert parse_backends("onnxruntime") == {s: "onnxruntime" for s in BACKEND_STAGES}
    assert parse_backends("dit=onnxruntime, hift=onnxruntime")["hift"] == "onnxruntime"
    assert parse_backends({"vq02": "onnxruntime"}) == {**{s: "torch" for s in BACKEND_STAGES}, "vq02": "onnxruntime"}
    assert RuntimeConfig(backends="dit=onnxruntime").backends["dit"] == "onnxruntime"


@pytest.mark.parametrize("value, match", [
    ({"llm": "onnxruntime"}, "unknown stage"), ({"dit": "tvm"}, "unknown backend"),
    ("dit=onnxruntime,hift", "STAGE=BACKEND"), (3, "mapping"),
])
def test_bad_backends_name_the_problem(value, match):
    with pytest.raises(InvalidInputError, match=match):
        RuntimeConfig(backends=value)


def test_tensorrt_on_cpu_is_an_error_not_a_downgrade():
    with pytest.raises(BackendUnavailableError, match="tensorrt .*CUDA"):
        RuntimeConfig(backends={"dit": "tensorrt"})


def test_missing_onnxruntime_is_unavailable(monkeypatch):
    real_import = builtins.__import__

    def no_ort(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("no onnxruntime")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    with pytest.raises(BackendUnavailableError, match="onnxruntime is not installed"):
        ort_module.import_onnxruntime()


def test_cuda_runtime_without_cuda_execution_provider_is_an_error(monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(BackendUnavailableError, match="CUDA execution provider"):
        providers_for(torch.device("cuda"))
    assert providers_for(CPU) == ["CPUExecutionProvider"]


# -- apply_backends / views -------------------------------------------------------------
def test_all_torch_keeps_components_and_logs_once(caplog):
    comps = SimpleNamespace(flow=object(), hift=object(), vq02=object())
    with caplog.at_level(logging.INFO, logger="editx"):
        assert apply_backends(comps, RuntimeConfig()) is comps
    lines = [r.message for r in caplog.records if "stage backends" in r.message]
    assert lines == ["stage backends: dit=torch, flow_encoder=torch, hift=torch, vq02=torch (device cpu)"]


def test_views_share_weights_and_leave_the_models_alone(views):
    m = models(TINY)
    assert type(m.flow.decoder.estimator).__name__ == "DiT" and isinstance(views.flow.decoder.estimator, DiTBackend)
    assert views.flow.encoder_proj.weight is m.flow.encoder_proj.weight
    assert views.hift.conv_pre.weight is m.hift.conv_pre.weight and "decode" not in vars(m.hift)
    assert views.vq02.after_norm.weight is m.vq02.after_norm.weight and "forward_chunk" not in vars(m.vq02)
    with pytest.raises(InvalidInputError, match="no method"):
        method_view(m.hift, "vocode", lambda: None)


def test_dit_backend_matches_torch(views):
    dit, backend = models(TINY).flow.decoder.estimator, views.flow.decoder.estimator
    x, mask, mu, t, spks, cond = graph_spec("dit").example_inputs(dit, frames=23, seed=3)
    mask[1, :, 17:] = 0  # padded keys in the second row
    with torch.no_grad():
        assert close(backend(x, mask, mu, t, spks, cond), dit(x, mask, mu, t, spks, cond))
        assert close(backend(x, None, mu, t, spks, cond), dit(x, None, mu, t, spks, cond))
    with pytest.raises(InvalidInputError, match=r"\[B, 1, T\]"):
        backend(x, torch.ones(2, 23, 23), mu, t, spks, cond)


def test_dit_chunk_backend_streams_like_torch(views):
    """Three chunks: the first without a cache (empty-cache graph call), then with growing caches."""
    dit, backend = models(TINY).flow.decoder.estimator, views.flow.decoder.estimator
    ref_cache = got_cache = None
    for i, frames in enumerate((7, 13, 5)):
        x, _, mu, t, spks, cond = graph_spec("dit").example_inputs(dit, frames=frames, seed=i)
        with torch.no_grad():
            ref, ref_cache = dit.forward_chunk(x, mu, t, spks, cond, ref_cache)
            got, got_cache = backend.forward_chunk(x, mu, t, spks, cond, got_cache)
        assert close(got, ref)
        for name in ("k", "v", "conv"):
            assert close(getattr(got_cache, name), getattr(ref_cache, name)), f"chunk {i} cache {name}"


def test_flow_encoder_backend(views):
    encoder, backend = models(TINY).flow.encoder, views.flow.encoder
    xs = graph_spec("flow_encoder").example_inputs(encoder, frames=11)[0]
    with torch.no_grad():
        assert close(backend(xs), encoder(xs))
        assert close(backend(xs, torch.tensor([11])), encoder(xs))
        # Streaming chunks stay on torch: identical results.
        ref, _ = encoder.forward_chunk(xs, None, last=True)
        got, _ = backend.forward_chunk(xs, None, last=True)
    assert torch.equal(got, ref)
    with pytest.raises(InvalidInputError, match="lengths"):
        backend(xs, torch.tensor([7]))


def test_hift_decode_backend(views):
    hift = models(TINY).hift
    mel, source = graph_spec("hift_decode").example_inputs(hift, frames=9, seed=2)
    with torch.no_grad():
        # dummy:tiny's random HiFT is ill-conditioned (see verify.py): 1e-3 of full scale, measured 2.7e-4.
        assert close(views.hift.decode(mel, source), hift.decode(mel, source), tol=1e-3)
    with pytest.raises(InvalidInputError, match="source"):
        views.hift.decode(mel, source[:, :, :-1])


@pytest.mark.parametrize("look_back", [4, -1, 0])
def test_vq02_backend_applies_upstreams_cache_rule(look_back):
    """encode() through the chunk graph equals torch for bounded, unbounded and no kv cache."""
    base = models(TINY).vq02
    enc = SANMStreamingEncoder(dataclasses.replace(base.cfg, encoder_chunk_look_back=look_back))
    enc.load_state_dict(base.state_dict())
    enc.eval()
    view = stage_views(SimpleNamespace(flow=None, hift=None, vq02=enc), {"vq02": "onnxruntime"}, runner)["vq02"]
    feats = torch.randn(1, 41, enc.cfg.input_size, generator=torch.Generator().manual_seed(look_back + 5))
    lengths = [4] * 9 + [5]  # upstream feeds 4 frames per call; the first block is cached whole
    ref = enc.encode(feats, lengths)
    assert close(view.encode(feats, lengths), ref)
    state = enc.init_state()
    _, after_torch = enc.forward_chunk(feats[:, :4], state)
    _, after_graph = view.forward_chunk(feats[:, :4], state)
    assert [kv is None for kv in after_graph.kv] == [kv is None for kv in after_torch.kv]
    with pytest.raises(InvalidInputError, match="feats_chunk"):
        view.forward_chunk(feats[:, :, :10], state)


# -- export folders ---------------------------------------------------------------------
def test_graph_source_checks_the_export_folder(tmp_path):
    dit = models(TINY).flow.decoder.estimator
    with pytest.raises(CheckpointError, match="graphs.json"):
        GraphSource(tmp_path)
    save_graphs(tmp_path, [exported(TINY, "dit")], TINY)
    assert GraphSource(tmp_path).onnx("dit", dit) == exported(TINY, "dit").onnx
    with pytest.raises(CheckpointError, match="dit_chunk.*not exported"):
        GraphSource(tmp_path).onnx("dit_chunk", dit)
    other = models(TINY).flow.encoder  # other weights than the graph was exported from
    with pytest.raises(CheckpointError, match="other weights"):
        GraphSource(tmp_path).onnx("dit", other)
    (tmp_path / "dit.onnx").write_bytes(b"tampered")
    with pytest.raises(CheckpointError, match="sha256"):
        GraphSource(tmp_path).onnx("dit", dit)
    (tmp_path / "graphs.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(CheckpointError, match="manifest"):
        GraphSource(tmp_path)


# -- end to end -------------------------------------------------------------------------
@pytest.mark.skipif(not AUDIO.is_file(), reason=f"speech clip {AUDIO} not found (../shared/audio)")
def test_dummy_tiny_clone_on_onnxruntime_equals_torch(tmp_path):
    # Graphs from an export folder (as `editx export` writes it) of the same weights: the runtime
    # checks their fingerprints and skips exporting again.
    save_graphs(tmp_path, [exported(TINY, g) for g in GRAPHS], TINY)
    torch_rt = editx.Runtime.from_pretrained(TINY, seed=0)
    ort_rt = editx.Runtime.from_pretrained(TINY, seed=0, backends="onnxruntime", export_dir=str(tmp_path))
    sampling = torch_rt.default_sampling(max_new_tokens=60)
    # The front end (vq02 on its chunk graph) gives the same codes, so the LLM sees the same prompt.
    voice_t, voice_o = torch_rt.encode_voice(AUDIO), ort_rt.encode_voice(AUDIO)
    assert voice_o.vq02 == voice_t.vq02
    # The decoder: same mixed ids and conditioning → mel within float32 op-order noise.
    mixed = voice_t.conditioning.prompt_mixed[:40]
    _, mel_t = torch_rt.decoder.offline(mixed, voice_t.conditioning, generator=torch.Generator().manual_seed(1))
    _, mel_o = ort_rt.decoder.offline(mixed, voice_t.conditioning, generator=torch.Generator().manual_seed(1))
    assert close(mel_o, mel_t)
    # The whole clone on the runtime's default path (the streaming engine: DiT chunk graph, HiFT decode
    # graph), same seed (the NSF draws and ODE noise are inputs, hence identical).
    a = torch_rt.clone(AUDIO, "A prompt.", "Hello there.", seed=3, sampling=sampling)
    b = ort_rt.clone(AUDIO, "A prompt.", "Hello there.", seed=3, sampling=sampling)
    assert a.info["generated_tokens"] == b.info["generated_tokens"] and a.samples.shape == b.samples.shape
    # dummy:tiny's random HiFT amplifies rounding (log-magnitudes up to ~72, phase arguments ±70
    # before the sine), so the ~1e-6 relative mel differences reach the waveform as up to 5.0e-3
    # (measured over 4 seeds; RMS 2.2e-4 of the signal's). Bounds: 4× those.
    diff = np.abs(a.samples - b.samples)
    assert diff.max() <= 2e-2
    assert np.sqrt((diff ** 2).mean()) <= 1e-3 * np.sqrt((a.samples ** 2).mean())
