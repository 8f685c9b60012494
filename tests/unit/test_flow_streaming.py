"""Streaming flow: chunk planning rules, chunks vs a block-causal whole-sequence reference,
cache truncation, state immutability, and input errors."""
from __future__ import annotations

import pytest
import torch

from random_weights import fill_random_

from editx.errors import InvalidInputError
from editx.models.flow import (
    EstimatorStreamCache,
    FlowConfig,
    FlowModel,
    block_causal_mask,
    inference_chunk,
    mixed_len,
    next_stream_action,
    plan_stream_chunks,
    reshape_mixed_tokens,
    setup_stream,
)

N_STEPS = 4  # fewer ODE steps keep the CPU tests fast; the step loop is the same for any count


def tiny_model(seed: int = 0) -> FlowModel:
    return fill_random_(FlowModel(FlowConfig.tiny()), seed)


def mixed_ids(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    vq02 = torch.randint(0, 1024, (n,), generator=g)
    vq06 = torch.randint(1024, 5120, (n,), generator=g)
    return torch.where(torch.arange(n) % 5 < 2, vq02, vq06)


def pairs(ids: torch.Tensor) -> torch.Tensor:
    return reshape_mixed_tokens(ids)[None]


def voice(prompt_frames: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    prompt = pairs(mixed_ids(5 * prompt_frames // 3, seed + 1))
    feat = torch.randn(1, 2 * prompt.shape[1], 80, generator=g)
    emb = torch.randn(1, 192, generator=g)
    noise = torch.randn(1, 80, 2000, generator=g)
    return prompt, feat, emb, noise


def run_stream(model, ids, prompt, feat, emb, noise, chunk_sizes, left_context=10_000):
    """Drive the streaming flow one id per call → (chunk mels, token frames per block, states)."""
    state, mels, blocks, states = None, [], [prompt.shape[1]], []
    for _, action, start in plan_stream_chunks(ids.numel(), chunk_sizes):
        chunk = pairs(ids[start:start + action.take])
        if action.kind == "setup":
            state = setup_stream(model, prompt, chunk, feat, emb, noise, N_STEPS, left_context)
        else:
            last = action.kind == "flush"
            mel, state = inference_chunk(model, chunk, state, last, noise)
            mels.append(mel)
            blocks.append(chunk.shape[1] - (0 if last else model.cfg.encoder.pre_lookahead_len))
        states.append(state)
    return mels, blocks, states


def block_causal_reference(model, ids, prompt, feat, emb, noise, blocks):
    """Whole-sequence flow where each block attends only to itself and earlier blocks."""
    with torch.no_grad():
        tokens = torch.cat([prompt, pairs(ids)], dim=1)
        h = model.encoder(model.embed_tokens(tokens, clamp=False), block_sizes=blocks)
        mu = model.encoder_proj(h).transpose(1, 2)
        cond = torch.zeros_like(mu)
        cond[:, :, :feat.shape[1]] = feat.transpose(1, 2)
        mask = block_causal_mask([2 * b for b in blocks])[None]
        x, _ = model.decoder.solve(mu, model.project_speaker(emb), cond, noise[:, :, :mu.shape[2]], N_STEPS,
                                   mask=mask)
    return x[:, :, feat.shape[1]:]


# -- planning --------------------------------------------------------------------------
def test_plan_for_one_id_per_call():
    plan = [(call, a.kind, a.take, start) for call, a, start in plan_stream_chunks(100, (15, 24, 48))]
    # setup at 5 ids; chunks need (chunk//3)*5 + 5 ids; the window advances by (chunk//3)*5
    assert plan == [(4, "setup", 5, 0), (29, "chunk", 30, 0), (69, "chunk", 45, 25), (99, "flush", 35, 65)]


@pytest.mark.parametrize("n,expected", [(4, []), (5, [(4, "setup")]), (7, [(4, "setup"), (6, "flush")])])
def test_plan_short_streams_follow_upstream(n, expected):
    # upstream: nothing before 5 ids; a call that sets up emits nothing, even the last one
    assert [(c, a.kind) for c, a, _ in plan_stream_chunks(n)] == expected


def test_chunk_sizes_round_down_and_pop_until_one_left():
    assert mixed_len(16) == mixed_len(15) == 25
    a = next_stream_action(30, True, (16, 24, 48), last=False)
    assert (a.kind, a.take, a.advance, a.chunk_sizes) == ("chunk", 30, 25, (24, 48))
    a = next_stream_action(85, True, (48,), last=False)
    assert (a.kind, a.chunk_sizes) == ("chunk", (48,))
    assert next_stream_action(29, True, (15, 24), last=False).kind == "wait"
    assert next_stream_action(4, False, (15,), last=True).kind == "wait"
    with pytest.raises(InvalidInputError, match="chunk_sizes"):
        next_stream_action(10, True, (), last=False)


# -- numerics --------------------------------------------------------------------------
@pytest.mark.parametrize("n_ids,chunk_sizes,prompt_frames", [(41, (3, 6), 6), (28, (9,), 9)])
def test_stream_equals_block_causal_whole_sequence(n_ids, chunk_sizes, prompt_frames):
    model = tiny_model(n_ids)
    ids = mixed_ids(n_ids, seed=n_ids)
    prompt, feat, emb, noise = voice(prompt_frames, seed=n_ids)
    mels, blocks, _ = run_stream(model, ids, prompt, feat, emb, noise, chunk_sizes)
    assert len(mels) >= 2
    ref = block_causal_reference(model, ids, prompt, feat, emb, noise, blocks)
    # equivalent fp32 computations in different op orders (chunked vs masked attention);
    # the ODE compounds ulp-level differences over the steps, values are O(1)
    torch.testing.assert_close(torch.cat(mels, dim=2), ref, atol=1e-4, rtol=0)


def test_truncation_keeps_prompt_and_newest_frames():
    model = tiny_model(1)
    ids = mixed_ids(56, seed=3)
    prompt, feat, emb, noise = voice(6, seed=3)
    left = 10
    mels_cut, _, states = run_stream(model, ids, prompt, feat, emb, noise, (6,), left_context=left)
    mels_full, _, _ = run_stream(model, ids, prompt, feat, emb, noise, (6,))
    prompt_mel = 2 * prompt.shape[1]
    offsets = [s.noise_offset for s in states]
    assert offsets[0] == prompt_mel
    assert all(o <= prompt_mel + left for o in offsets)
    # chunks before the first truncation see the same cache, so they agree exactly
    assert torch.equal(mels_cut[0], mels_full[0])
    assert not torch.allclose(mels_cut[-1], mels_full[-1])


def test_estimator_cache_truncation_layout():
    frames = torch.arange(20.0).view(1, 1, 1, 1, 20, 1).expand(2, 3, 2, 1, 20, 4)
    cache = EstimatorStreamCache(k=frames, v=frames + 100, conv=torch.zeros(2, 3, 2, 2, 8, 2))
    assert cache.truncated(prompt_frames=6, left_context=14) is cache
    cut = cache.truncated(prompt_frames=6, left_context=5)
    assert cut.frames == 11
    assert cut.k[0, 0, 0, 0, :, 0].tolist() == [0, 1, 2, 3, 4, 14, 15, 16, 17, 18, 19]
    assert torch.equal(cut.v, cut.k + 100)


def test_state_is_immutable_and_reusable():
    model = tiny_model(2)
    ids = mixed_ids(40, seed=5)
    prompt, feat, emb, noise = voice(6, seed=5)
    state = setup_stream(model, prompt, pairs(ids[:5]), feat, emb, noise, N_STEPS)
    snapshot = {k: v.clone() for k, v in vars(state.encoder).items()}
    k_before = state.estimator.k.clone()
    chunk = pairs(ids[:30])
    mel_a, next_a = inference_chunk(model, chunk, state, False, noise)
    mel_b, _ = inference_chunk(model, chunk, state, False, noise)
    assert torch.equal(mel_a, mel_b)
    assert torch.equal(state.estimator.k, k_before)
    assert all(torch.equal(getattr(state.encoder, k), v) for k, v in snapshot.items())
    assert next_a.noise_offset == state.noise_offset + mel_a.shape[2]


# -- errors ----------------------------------------------------------------------------
def test_streaming_input_errors():
    model = tiny_model(3)
    prompt, feat, emb, noise = voice(6, seed=7)
    look = pairs(mixed_ids(5, seed=7))
    with pytest.raises(InvalidInputError, match="lookahead_pairs: expected 3 token frames"):
        setup_stream(model, prompt, torch.cat([look, look], dim=1), feat, emb, noise, N_STEPS)
    with pytest.raises(InvalidInputError, match="negative token id"):
        setup_stream(model, prompt, look - 2000, feat, emb, noise, N_STEPS)
    with pytest.raises(InvalidInputError, match="noise: needs at least"):
        setup_stream(model, prompt, look, feat, emb, noise[:, :, :5], N_STEPS)
    with pytest.raises(InvalidInputError, match="left_context"):
        setup_stream(model, prompt, look, feat, emb, noise, N_STEPS, left_context=0)
    state = setup_stream(model, prompt, look, feat, emb, noise, N_STEPS)
    with pytest.raises(InvalidInputError, match="out of range"):
        inference_chunk(model, look + 5000, state, False, noise)
    with pytest.raises(InvalidInputError, match="non-final chunk"):
        inference_chunk(model, look, state, False, noise)
    with pytest.raises(InvalidInputError, match="state"):
        inference_chunk(model, look, object(), True, noise)
    with pytest.raises(InvalidInputError, match="noise"):
        inference_chunk(model, look, state, True, noise[:, :, :state.noise_offset + 2])
