"""Parity of the flow decoder (editx.models.flow) with upstream, on every matching fixture case.

Covers token_reshape (every sub-case), dual_codebook_embedding, flow_encoder, every
dit_estimator_* case, flow_inference, the flow half of token2wav_nonstream (mel) and
of token2wav_stream (per-chunk flow mels, driven by the case's one-id-per-call feed
through `plan_stream_chunks`). Dims, lengths, params and tolerances come from the manifest.
"""
from __future__ import annotations

from functools import lru_cache
import pytest
import torch

from editx.models.flow import (
    FlowModel,
    inference_chunk,
    load_flow,
    plan_stream_chunks,
    reshape_mixed_tokens,
    setup_stream,
)
from fixture_sets import assert_matches, cases_where, named


@lru_cache(maxsize=4)
def _model(weights_dir: str) -> FlowModel:
    return load_flow(weights_dir)[0]


def model_for(case) -> FlowModel:
    path = case.weights("weights/cosyvoice")
    return _model(str(path.parent if path.is_file() else path))


def bf16_rounded(case, name: str) -> torch.Tensor:
    """An input as upstream saw it: tts.py rounds the listed inputs to bf16 before the decoder."""
    x = case.input(name)
    return x.to(torch.bfloat16).float() if name in case.params.get("bf16_round_inputs", []) else x


def pairs_of(mixed: torch.Tensor) -> torch.Tensor:
    """Mixed ids `[1, N]` → pairs `[1, T, 2]`."""
    return reshape_mixed_tokens(mixed.reshape(-1))[None]


@pytest.mark.parametrize("case", cases_where(named("token_reshape")))
def test_token_reshape(case):
    names = sorted((n for n in case.input_names() if n.startswith("mixed_")), key=lambda n: int(n.split("_")[1]))
    assert names, f"{case.id}: no mixed_* inputs"
    if "lengths" in case.params:  # the sub-cases are the lengths the manifest lists
        assert [case.input(n).numel() for n in names] == [int(n) for n in case.params["lengths"]]
    for name in names:
        out = "pairs_" + name.removeprefix("mixed_")
        got = reshape_mixed_tokens(case.input(name))
        assert_matches(got, case.output(out), case.tolerance(out), f"{case.id} {out}")


@pytest.mark.parametrize("case", cases_where(named("dual_codebook_embedding")))
def test_dual_codebook_embedding(case):
    with torch.no_grad():
        got = model_for(case).input_embedding(case.input("pairs"))
    assert_matches(got, case.output("embedding"), case.tolerance("embedding"), f"{case.id} embedding")


@pytest.mark.parametrize("case", cases_where(named("flow_encoder")))
def test_flow_encoder(case):
    model = model_for(case)
    token = case.input("token")
    with torch.no_grad():
        embedded = model.embed_tokens(token, clamp=True)
        encoder_out = model.encoder(embedded, case.input("token_len"))
        got = {"embedded": embedded, "encoder_out": encoder_out, "mu": model.encoder_proj(encoder_out)}
    for name in case.output_names():
        assert_matches(got[name], case.output(name), case.tolerance(name), f"{case.id} {name}")


@pytest.mark.parametrize("case", cases_where(named("dit_estimator_")))
def test_dit_estimator(case):
    args = [case.input(n) for n in ("x", "mask", "mu", "t", "spks", "cond")]
    with torch.no_grad():
        velocity = model_for(case).decoder.estimator(*args)
    assert_matches(velocity, case.output("velocity"), case.tolerance("velocity"), f"{case.id} velocity")


@pytest.mark.parametrize("case", cases_where(named("flow_inference")))
def test_flow_inference(case):
    model = model_for(case)
    assert case.params.get("inference_cfg_rate", model.cfg.inference_cfg_rate) == model.cfg.inference_cfg_rate
    noise = case.input("rand_noise") * float(case.params.get("temperature", 1.0))  # upstream: z = noise·temperature
    mel, states = model.inference(
        case.input("token"), case.input("prompt_token"), case.input("prompt_feat"), case.input("embedding"),
        noise, n_timesteps=int(case.params["n_timesteps"]), return_states=True)
    with torch.no_grad():
        spk_proj = model.project_speaker(case.input("embedding"))
    got = {"mel": mel, "spk_proj": spk_proj, "x_per_step": states}
    for name in case.output_names():
        assert_matches(got[name], case.output(name), case.tolerance(name), f"{case.id} {name}")


@pytest.mark.parametrize("case", cases_where(named("token2wav_nonstream")))
def test_token2wav_nonstream_flow_mel(case):
    model = model_for(case)
    mel = model.inference(
        pairs_of(case.input("token")), pairs_of(case.input("prompt_token")), bf16_rounded(case, "prompt_feat"),
        bf16_rounded(case, "embedding"), case.input("rand_noise"), n_timesteps=int(case.params["n_timesteps"]))
    assert_matches(mel, case.output("mel"), case.tolerance("mel"), f"{case.id} mel")


def run_stream(model: FlowModel, case) -> tuple[list[torch.Tensor], list[int]]:
    """Drive the streaming flow with the case's feed (one mixed id per call) → (chunk mels, emitting calls)."""
    p = case.params
    assert p.get("feed", "one mixed id per call") == "one mixed id per call"
    tokens = case.input("token").reshape(-1)
    prompt_pairs = pairs_of(case.input("prompt_token"))
    prompt_feat, embedding = bf16_rounded(case, "prompt_feat"), bf16_rounded(case, "embedding")
    noise = case.input("rand_noise")
    cfg = model.cfg
    plan = plan_stream_chunks(tokens.numel(), tuple(p.get("chunk_size_list", cfg.chunk_sizes)),
                              int(p.get("token_lookahead_frames", cfg.encoder.pre_lookahead_len)))
    state, mels, calls = None, [], []
    for call, action, start in plan:
        ids = tokens[start:start + action.take]
        if action.kind == "setup":
            state = setup_stream(model, prompt_pairs, pairs_of(ids), prompt_feat, embedding, noise,
                                 n_timesteps=int(p.get("n_timesteps", cfg.n_timesteps)),
                                 left_context=int(p.get("estimator_att_cache_left_context",
                                                        cfg.stream_att_left_context)))
            continue
        mel, state = inference_chunk(model, pairs_of(ids), state, action.kind == "flush", noise)
        mels.append(mel)
        calls.append(call)
    return mels, calls


@pytest.mark.parametrize("case", cases_where(named("token2wav_stream")))
def test_token2wav_stream_flow_mel_chunks(case):
    mels, calls = run_stream(model_for(case), case)
    assert_matches(torch.tensor(calls), case.output("emit_call_index"), case.tolerance("emit_call_index"),
                   f"{case.id} emit_call_index")
    # chunk lengths are integers (the manifest lists no tolerance for them): exact
    assert_matches(torch.tensor([m.shape[2] for m in mels]), case.output("flow_mel_chunk_lengths"), "exact",
                   f"{case.id} flow_mel_chunk_lengths")
    assert_matches(torch.cat(mels, dim=2), case.output("flow_mel_chunks"), case.tolerance("flow_mel_chunks"),
                   f"{case.id} flow_mel_chunks")

