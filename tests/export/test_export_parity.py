"""Upstream parity with the exported graphs on onnxruntime (CPU), at the manifest's tolerances.

Each case's weights are exported to ONNX and put in place of torch through the runtime's
own backend views (editx.export.backends.stage_views); inputs, outputs and tolerances come
from every matching case of every fixture set. This covers every graph: the DiT (offline
velocity, the whole ODE, and the streaming chunk graph with its caches), the flow encoder,
HiFT decode and the vq02 chunk graph with upstream's cache rule.
"""
from __future__ import annotations

from functools import lru_cache
from types import SimpleNamespace

import pytest
import torch

from editx.engine.token2wav import Token2Wav, VoiceConditioning
from editx.export.backends import stage_views
from editx.export.graphs import graph_spec
from editx.export.ort import OrtGraph
from editx.models.flow import load_flow
from editx.models.hift import load_hift
from editx.models.vq02 import load_paraformer_encoder
from editx.models.vq02_encoder import UPSTREAM_CHUNK_SIZE, UPSTREAM_ENCODER_LOOK_BACK
from export_support import export_cached
from fixture_sets import assert_matches, cases_where, named

CPU = torch.device("cpu")
ALL_ORT = {"dit": "onnxruntime", "flow_encoder": "onnxruntime", "hift": "onnxruntime", "vq02": "onnxruntime"}


def ort_runner(stage: str, graph: str, model: torch.nn.Module):
    return OrtGraph(export_cached(graph, model).onnx, graph_spec(graph), CPU, model)


@lru_cache(maxsize=4)
def decoder_views(cosyvoice_dir: str) -> SimpleNamespace:
    """(flow, hift) loaded from a case's weights, with every decoder stage on onnxruntime."""
    flow, _ = load_flow(cosyvoice_dir)
    hift = load_hift(cosyvoice_dir)
    models = SimpleNamespace(flow=flow, hift=hift, vq02=None)
    views = stage_views(models, {k: v for k, v in ALL_ORT.items() if k != "vq02"}, ort_runner)
    return SimpleNamespace(flow=views["flow"], hift=views["hift"])


def views_for(case) -> SimpleNamespace:
    path = case.weights("weights/cosyvoice")  # a folder, or a file in it (hift.pt / flow.pt)
    return decoder_views(str(path if path.is_dir() else path.parent))


@lru_cache(maxsize=4)
def vq02_view(paraformer_dir: str, chunk_size: tuple, look_back: int):
    encoder, _ = load_paraformer_encoder(paraformer_dir, chunk_size=chunk_size, encoder_chunk_look_back=look_back)
    return stage_views(SimpleNamespace(flow=None, hift=None, vq02=encoder), {"vq02": "onnxruntime"}, ort_runner)["vq02"]


@pytest.mark.parametrize("case", cases_where(named("dit_estimator_")))
def test_dit_estimator_on_onnxruntime(case):
    args = [case.input(n) for n in ("x", "mask", "mu", "t", "spks", "cond")]
    velocity = views_for(case).flow.decoder.estimator(*args)
    assert_matches(velocity, case.output("velocity"), case.tolerance("velocity"), f"{case.id} velocity")


@pytest.mark.parametrize("case", cases_where(named("flow_encoder")))
def test_flow_encoder_on_onnxruntime(case):
    flow = views_for(case).flow
    token = case.input("token")
    with torch.no_grad():
        embedded = flow.embed_tokens(token, clamp=True)
        encoder_out = flow.encoder(embedded, case.input("token_len"))
        got = {"embedded": embedded, "encoder_out": encoder_out, "mu": flow.encoder_proj(encoder_out)}
    for name in case.output_names():
        assert_matches(got[name], case.output(name), case.tolerance(name), f"{case.id} {name}")


@pytest.mark.parametrize("case", cases_where(named("flow_inference")))
def test_flow_ode_on_onnxruntime(case):
    flow = views_for(case).flow
    noise = case.input("rand_noise") * float(case.params.get("temperature", 1.0))
    mel = flow.inference(case.input("token"), case.input("prompt_token"), case.input("prompt_feat"),
                         case.input("embedding"), noise, n_timesteps=int(case.params["n_timesteps"]))
    assert_matches(mel, case.output("mel"), case.tolerance("mel"), f"{case.id} mel")


@pytest.mark.parametrize("case", cases_where(named("hift_decode")))
def test_hift_decode_on_onnxruntime(case):
    speech = views_for(case).hift.decode(case.input("mel"), case.input("source"))
    assert_matches(speech, case.output("speech"), case.tolerance("speech"), f"{case.id} speech")


@pytest.mark.parametrize("case", cases_where(named("vq02_encoder_forward")))
def test_vq02_encoder_on_onnxruntime(case):
    p = case.params
    encoder = vq02_view(str(case.weights("weights/paraformer")), tuple(p.get("chunk_size", UPSTREAM_CHUNK_SIZE)),
                        int(p.get("encoder_chunk_look_back", UPSTREAM_ENCODER_LOOK_BACK)))
    enc_out = encoder.encode(case.input("feats"), case.input("chunk_lengths"))
    assert_matches(enc_out, case.output("enc_out"), case.tolerance("enc_out"), f"{case.id} enc_out")


def _decoder(case) -> Token2Wav:
    v = views_for(case)
    return Token2Wav(v.flow, v.hift, case.input("rand_noise"), int(case.params.get("n_timesteps", 10)))


def _voice(case) -> VoiceConditioning:
    return VoiceConditioning.from_features(case.input("prompt_token").reshape(-1), case.input("prompt_feat"),
                                           case.input("embedding"))


@pytest.mark.parametrize("case", cases_where(named("token2wav_nonstream")))
def test_token2wav_offline_on_onnxruntime(case):
    draws = (case.input("nsf_rand_ini"), case.input("nsf_sine_noise"))
    speech, mel = _decoder(case).offline(case.input("token").reshape(-1), _voice(case), draws=draws)
    assert_matches(mel, case.output("mel"), case.tolerance("mel"), f"{case.id} mel")
    assert_matches(speech[None], case.output("speech"), case.tolerance("speech"), f"{case.id} speech")


@pytest.mark.parametrize("case", cases_where(named("token2wav_stream")))
def test_token2wav_stream_on_onnxruntime(case):
    """The streaming DiT runs the chunk graph with its caches as I/O; HiFT decode runs on onnxruntime."""
    lengths = case.input("nsf_call_lengths").tolist()
    noise = torch.split(case.input("nsf_sine_noise"), lengths, dim=1)
    rand_ini = case.input("nsf_rand_ini")
    stream = _decoder(case).stream(_voice(case), draws=lambda k, n: (rand_ini[k:k + 1], noise[k]), record=True)
    tokens = case.input("token").reshape(-1).tolist()
    chunks = [c for i, t in enumerate(tokens) for c in stream.push([t], last=i == len(tokens) - 1)]
    mels = torch.cat([m for m, _ in stream.trace], dim=2)
    assert_matches(mels, case.output("flow_mel_chunks"), case.tolerance("flow_mel_chunks"), f"{case.id} flow mel")
    assert_matches(torch.cat(chunks)[None], case.output("audio"), case.tolerance("audio"), f"{case.id} audio")
