"""Parity of token2wav (flow + HiFT, offline and streamed) with upstream's CosyVoice wrapper.

Inputs, draws, weights and tolerances come from each `token2wav_*` case of every fixture
set. The free-running waveforms integrate the NSF phase over the whole utterance, hence
their looser tolerances (fixtures README §7); mel and source are compared tightly.
"""
from __future__ import annotations

from functools import lru_cache

import pytest
import torch

from editx.engine.token2wav import Token2Wav, VoiceConditioning
from editx.models.flow.dit_slots import DiTSlots
from editx.models.flow import load_flow
from editx.models.hift import load_hift
from fixture_sets import assert_matches, cases_where, named


@lru_cache(maxsize=4)
def _decoder(weights: str) -> tuple:
    flow, _ = load_flow(weights)
    return flow, load_hift(weights)


def decoder_for(case) -> Token2Wav:
    flow, hift = _decoder(str(case.weights("weights/cosyvoice")))
    return Token2Wav(flow, hift, case.input("rand_noise"), int(case.params.get("n_timesteps", 10)))


def voice_of(case) -> VoiceConditioning:
    # The case stores fp32 prompt mel / x-vector; upstream rounds both to bf16 (params.bf16_round_inputs).
    assert set(case.params.get("bf16_round_inputs", [])) <= {"prompt_feat", "embedding"}
    return VoiceConditioning.from_features(case.input("prompt_token").reshape(-1),
                                           case.input("prompt_feat"), case.input("embedding"))


@pytest.mark.parametrize("case", cases_where(named("token2wav_nonstream")))
def test_token2wav_nonstream(case):
    decoder = decoder_for(case)
    draws = (case.input("nsf_rand_ini"), case.input("nsf_sine_noise"))
    speech, mel = decoder.offline(case.input("token").reshape(-1), voice_of(case), draws=draws)
    assert_matches(mel, case.output("mel"), case.tolerance("mel"), f"{case.id} mel")
    assert_matches(speech[None], case.output("speech"), case.tolerance("speech"), f"{case.id} speech")
    _, source = decoder.hift.inference(mel, draws=draws)
    assert_matches(source, case.output("hift_source"), case.tolerance("hift_source"), f"{case.id} hift_source")


def _split_draws(case):
    """Per-HiFT-call NSF draws: row k of nsf_rand_ini, and the k-th slice of nsf_sine_noise."""
    lengths = case.input("nsf_call_lengths").tolist()
    noise = torch.split(case.input("nsf_sine_noise"), lengths, dim=1)
    rand_ini = case.input("nsf_rand_ini")

    def provide(call: int, n_samples: int):
        assert noise[call].shape[1] == n_samples, f"HiFT call {call}: {n_samples} samples, fixture has {lengths[call]}"
        return rand_ini[call:call + 1], noise[call]

    return provide


def with_slot_pool(decoder: Token2Wav, case) -> Token2Wav:
    """The same decoder with a DiT slot pool (static-shape solves; CUDA graphs on a GPU) sized for the
    case's prompt: a second decoder object, the models are shared."""
    cfg = decoder.flow.cfg
    pooled = Token2Wav(decoder.flow, decoder.hift, decoder.noise, decoder.n_timesteps)
    # a slot bigger than any prompt mel the case can have (≤ token_mel_ratio mel frames per stored id)
    prompt_frames = cfg.token_mel_ratio * int(case.input("prompt_token").numel()) + 16
    pooled.slots = DiTSlots.for_flow(decoder.flow, decoder.n_timesteps, 1, prompt_frames)
    return pooled


@pytest.mark.parametrize("pool", [False, True], ids=["packed-caches", "dit-slot-pool"])
@pytest.mark.parametrize("case", cases_where(named("token2wav_stream")))
def test_token2wav_stream(case, pool):
    assert case.params.get("feed", "one mixed id per call") == "one mixed id per call"
    decoder = decoder_for(case)
    if pool:
        decoder = with_slot_pool(decoder, case)
    cfg = decoder.flow.cfg
    assert list(case.params.get("chunk_size_list", cfg.chunk_sizes)) == list(cfg.chunk_sizes)
    assert int(case.params.get("mel_cache_len", cfg.mel_cache_len)) == cfg.mel_cache_len
    stream = decoder.stream(voice_of(case), draws=_split_draws(case), record=True)
    tokens = case.input("token").reshape(-1).tolist()
    chunks, calls = [], []
    for i, tok in enumerate(tokens):
        out = stream.push([tok], last=i == len(tokens) - 1)
        assert len(out) <= 1
        if out:
            chunks.append(out[0])
            calls.append(i)
    exact = "exact"
    assert_matches(torch.tensor(calls), case.output("emit_call_index"), exact, f"{case.id} emit_call_index")
    assert_matches(torch.tensor([c.numel() for c in chunks]), case.output("chunk_lengths"), exact,
                   f"{case.id} chunk_lengths")
    mels = torch.cat([m for m, _ in stream.trace], dim=2)
    assert_matches(mels, case.output("flow_mel_chunks"), case.tolerance("flow_mel_chunks"), f"{case.id} flow mel")
    sources = torch.cat([s for _, s in stream.trace], dim=2)
    assert_matches(sources, case.output("hift_sources"), case.tolerance("hift_sources"), f"{case.id} sources")
    assert_matches(torch.cat(chunks)[None], case.output("audio"), case.tolerance("audio"), f"{case.id} audio")
    if pool:  # the stream really ran in the pool, and gave its slot back at the end
        assert decoder.slots.solves > 0 and decoder.slots.free_slots == 1


@pytest.mark.parametrize("case", cases_where(named("token2wav_stream")))
def test_stream_chunking_independent_of_push_grouping(case):
    """Pushing all ids at once gives the same chunks as one id per push (same draws)."""
    decoder = decoder_for(case)
    tokens = case.input("token").reshape(-1)
    one = decoder.stream(voice_of(case), draws=_split_draws(case))
    per_id = [c for i, t in enumerate(tokens.tolist()) for c in one.push([t], last=i == len(tokens) - 1)]
    bulk = decoder.stream(voice_of(case), draws=_split_draws(case)).push(tokens, last=True)
    assert [c.numel() for c in bulk] == [c.numel() for c in per_id]
    assert torch.equal(torch.cat(bulk), torch.cat(per_id))


@pytest.mark.parametrize("case", cases_where(named("token2wav_stream")))
def test_streaming_deviation_from_offline_matches_upstream(case):
    """Streaming and offline decoding of the same tokens differ by design (different noise slices,
    chunked attention). Our deviation must equal upstream's (params.max_abs_diff_vs_nonstream):
    each of our outputs is within its case's audio tolerance of upstream's, so the two
    deviations can differ by at most the sum of those tolerances."""
    upstream_dev = case.params.get("max_abs_diff_vs_nonstream")
    offline_cases = [p.values[0] for p in cases_where(named("token2wav_nonstream"))
                     if p.values[0] is not None and p.values[0].root == case.root]
    if upstream_dev is None or not offline_cases:
        pytest.skip("set has no offline twin / no recorded deviation")
    off = offline_cases[0]
    assert torch.equal(off.input("token"), case.input("token"))
    decoder = decoder_for(case)
    offline, _ = decoder.offline(off.input("token").reshape(-1), voice_of(off),
                                 draws=(off.input("nsf_rand_ini"), off.input("nsf_sine_noise")))
    stream = decoder.stream(voice_of(case), draws=_split_draws(case))
    streamed = torch.cat(stream.push(case.input("token").reshape(-1), last=True))
    ours = float((streamed - offline).abs().max())
    budget = case.tolerance("audio")["atol"] + off.tolerance("speech")["atol"]
    print(f"{case.id}: streaming vs offline max |diff| = {ours:.4f} (upstream {upstream_dev:.4f}), "
          f"peak {float(offline.abs().max()):.3f}")
    assert abs(ours - upstream_dev) <= budget
