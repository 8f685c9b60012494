"""`decode_batch` (the token2wav pushes of several streams as batched flow + HiFT work) vs
each stream's own `push`, plus the ragged building blocks it uses and its error paths.

Every comparison runs twin streams (same voice, same seeded generator / draw provider):
one driven by `push`, one by `decode_batch`. Chunk counts and lengths must be identical;
samples agree up to floating-point reduction order (see the tolerances below).
"""
from __future__ import annotations

from dataclasses import fields

import pytest
import torch

from decoder_testing import (assert_close, chunk_rounds_vs_single, make_decoder, make_voice, mixed_ids,
                             pairs_of, tiny_flow, tiny_hift)
from editx.engine.token2wav import Token2Wav, Token2WavStream, VoiceConditioning, decode_batch
from editx.errors import InvalidInputError
from editx.kernels import _triton
from editx.layers import kernel_backend
from editx.models.flow import setup_stream
from editx.models.flow.encoder import EncoderChunkCache
from editx.models.flow.streaming import inference_chunk_batch, setup_stream_batch
from editx.models.hift import HiFTStreamState, draw_nsf
from editx.models.hift_stream import vocode_chunk_batch

# Tolerances (fp32), relative to the peak magnitude of the compared tensor. The batched and the
# single-stream runs differ only in summation order (matmuls / convs over other batch sizes and
# padded lengths, masked vs unmasked softmax), compounded over the ODE steps.
# RTOL (flow mels, flow caches, HiFT mel cache): measured ≤ 4e-7 on mels (2.4e-6 on a 6.4 peak) and
# ≤ 1e-6 on caches; 1e-5 leaves ~10x margin, while a padded key leaking into attention, a conv cache
# taken from a padded frame or a wrong noise offset moves them by > 1e-2 relative.
RTOL = 1e-5
# AUDIO_RTOL (waveforms, NSF sources): HiFT's f0 (~150 Hz) may come out of a batched conv one ulp
# (1.5e-5 Hz) apart, and the NSF phase integrates f0 over the chunk (≤ 2.1 s), so harmonic 9 drifts
# by up to 2π·9·1.5e-5·2.1 ≈ 2e-3 rad: source and audio move by ~1e-4 of their peak (measured
# ≤ 8.3e-5 on sources, ≤ 6.9e-5 on audio; ≤ 1.3e-6 on audio where f0 came out identical). 5e-4
# leaves ~6x margin; another stream's mel or draws, or a misplaced cross-fade, moves audio by O(1).
AUDIO_RTOL = 5e-4
# bf16 is a smoke run. Flow mels: one bf16 rounding (2^-8) of a differently-ordered sum, carried
# through the ODE, measured ≤ 3e-3 of the peak; 0.05 still catches garbage. Audio is only checked
# for finite, in-range samples of the right lengths: HiFT's bf16 f0 has a 1 Hz ulp at 150 Hz, so the
# integrated NSF phase of the two runs may legitimately part (see AUDIO_RTOL).
BF16_MEL_RTOL = 0.05
N_STEPS = 4  # ODE steps of most tests: the step loop is the same for any count (the scenario uses 10)


# -- models and inputs (shared ones in tests/decoder_testing.py) ----------------------------
def provider(seed: int, channels: int):
    """A deterministic NSF draw provider (the parity tests' kind): draws depend on (call, samples) only."""
    def provide(call: int, n_samples: int):
        return draw_nsf(1, n_samples, channels, "cpu", torch.Generator().manual_seed(seed * 1000 + call))
    return provide


def twin_streams(decoder: Token2Wav, voice: VoiceConditioning, seed: int, use_provider: bool = False,
                 record: bool = True) -> tuple[Token2WavStream, Token2WavStream]:
    def one() -> Token2WavStream:
        if use_provider:
            return decoder.stream(voice, draws=provider(seed, decoder.hift.config.n_harmonic_channels),
                                  record=record)
        return decoder.stream(voice, generator=torch.Generator().manual_seed(seed), record=record)
    return one(), one()


# -- comparisons ---------------------------------------------------------------------------
def assert_chunks(got: list[torch.Tensor], ref: list[torch.Tensor], rtol: float, what: str) -> None:
    assert [c.numel() for c in got] == [c.numel() for c in ref], f"{what}: chunk lengths"
    for k, (g, r) in enumerate(zip(got, ref)):
        assert g.dtype == r.dtype, f"{what} chunk {k}: dtype"
        assert_close(g, r, rtol, f"{what} chunk {k}")


def assert_same_state(got: Token2WavStream, ref: Token2WavStream, what: str, rtol: float = RTOL,
                      audio_rtol: float = AUDIO_RTOL) -> None:
    """Bookkeeping exactly equal, cache tensors of equal shapes and close values."""
    assert got.buffer == ref.buffer, f"{what}: buffered ids"
    assert got.chunk_sizes == ref.chunk_sizes, f"{what}: chunk-size list"
    assert (got.finished, got.hift_calls) == (ref.finished, ref.hift_calls), f"{what}: finished / hift calls"
    assert (got.flow_state is None) == (ref.flow_state is None), f"{what}: set-up done"
    if ref.flow_state is not None:
        g, r = got.flow_state, ref.flow_state
        assert (g.prompt_frames, g.n_timesteps, g.left_context, g.noise_offset, g.encoder.frames) == \
            (r.prompt_frames, r.n_timesteps, r.left_context, r.noise_offset, r.encoder.frames), f"{what}: flow state"
        assert_close(g.spks, r.spks, rtol, f"{what} spks")
        for f in fields(EncoderChunkCache):
            assert_close(getattr(g.encoder, f.name), getattr(r.encoder, f.name), rtol, f"{what} encoder.{f.name}")
        for name in ("k", "v", "conv"):
            assert_close(getattr(g.estimator, name), getattr(r.estimator, name), rtol, f"{what} estimator.{name}")
    g, r = got.hift_state, ref.hift_state
    assert (g.finished, g.mel_cache_len, g.started) == (r.finished, r.mel_cache_len, r.started), f"{what}: hift"
    for name in ("mel", "source", "speech"):
        if getattr(r, name) is not None:
            assert_close(getattr(g, name), getattr(r, name), rtol if name == "mel" else audio_rtol,
                         f"{what} hift.{name}")
    assert len(got.trace) == len(ref.trace), f"{what}: recorded chunks"
    for k, ((gm, gs), (rm, rs)) in enumerate(zip(got.trace, ref.trace)):
        assert_close(gm, rm, rtol, f"{what} mel of chunk {k}")
        assert_close(gs, rs, audio_rtol, f"{what} source of chunk {k}")


# -- the scenario --------------------------------------------------------------------------
def scripted_calls(totals: list[int], seed: int) -> list[list[tuple[int, int, bool]]]:
    """Per call, (stream, number of new ids, last). Calls 0-2 are fixed (see below), then random
    feeds (some empty) until every stream got its ids; each stream's final feed has last=True."""
    fixed = [
        [(1, 160, False), (3, 4, False)],  # 1: set-up + 15, 24 and 48-frame chunks in one push; 3: waits
        # 1: a 48-frame chunk while 3 sets up and runs its first chunk, 0 only sets up, 2 ends after 7 ids
        [(1, 80, False), (3, 26, False), (0, 5, False), (2, 7, True)],
        # one flow batch of a 15- (0: first chunk, odd feed), a 48- (1) and a 24-frame chunk (3); 4: empty push
        [(0, 33, False), (1, 80, False), (3, 40, False), (4, 0, False)],
    ]
    fed = [0] * len(totals)
    calls: list[list[tuple[int, int, bool]]] = []
    for call in fixed:
        items = [(i, n, end) for i, n, end in call if i < len(totals)]
        for i, n, _ in items:
            fed[i] += n
        calls.append(items)
    g = torch.Generator().manual_seed(seed)
    while any(f < t for f, t in zip(fed, totals)):
        items = []
        for i, total in enumerate(totals):
            if fed[i] >= total or float(torch.rand(1, generator=g)) < 0.2:
                continue
            n = min(int(torch.randint(0, 70, (1,), generator=g)), total - fed[i])
            fed[i] += n
            items.append((i, n, fed[i] == total))
        if items:
            calls.append(items)
    return calls


def push_and_batch(twins, ids: list[list[int]], fed: list[int], items):
    """One call: stream i gets its next n ids (items: (i, n, last)), fed one way to twin 0 by `push`
    and to twin 1 by one `decode_batch`. Advances `fed`; returns [(i, pushed chunks, batched chunks)]."""
    feeds = []
    for i, n, last in items:
        feeds.append((i, ids[i][fed[i]:fed[i] + n], last))
        fed[i] += n
    by_push = [twins[i][0].push(chunk, last) for i, chunk, last in feeds]
    by_batch = decode_batch([(twins[i][1], chunk, last) for i, chunk, last in feeds])
    return [(i, p, b) for (i, _, _), p, b in zip(feeds, by_push, by_batch)]


def run_scenario(n_streams: int, seed: int, dtype: torch.dtype = torch.float32):
    """Drive twin streams call by call; yields (call, [(stream index, push chunks, batch chunks)], twins)."""
    flow, hift = tiny_flow(dtype=dtype), tiny_hift(dtype=dtype)
    # Streams 0-3 share one decoder (10 ODE steps); stream 4 has its own (other noise, 3 steps), so
    # one call batches per decoder.
    decoders = [make_decoder(flow, hift, 10, seed)] * 4 + [make_decoder(flow, hift, 3, seed + 1)]
    prompt_ids = [23, 41, 12, 37, 29]  # different prompt lengths, not multiples of 5
    totals = [263, 401, 7, 331, 118][:n_streams]  # stream 2 ends during its set-up call
    ids = [mixed_ids(n, 100 * seed + i) for i, n in enumerate(totals)]
    twins = [twin_streams(decoders[i], make_voice(prompt_ids[i], 10 * seed + i), 50 + i, use_provider=i == 1)
             for i in range(n_streams)]
    fed = [0] * n_streams
    for call, items in enumerate(scripted_calls(totals, seed)):
        yield call, push_and_batch(twins, ids, fed, items), twins


@pytest.mark.parametrize("n_streams,seed", [(5, 1), (2, 2)])
def test_decode_batch_equals_push(n_streams, seed):
    seen_kinds = set()
    for call, results, twins in run_scenario(n_streams, seed):
        for i, by_push, by_batch in results:
            assert_chunks(by_batch, by_push, AUDIO_RTOL, f"call {call} stream {i}")
            seen_kinds.add((call, i, len(by_push)))
    for twin_push, twin_batch in twins:
        assert twin_batch.finished and twin_push.finished
        assert_chunks([m for m, _ in twin_batch.trace], [m for m, _ in twin_push.trace], RTOL, "flow mels")
    # the fixed calls did what they are meant to (several actions per push, set-up + chunk in one call)
    assert {(0, 1, 3), (1, 1, 1), (2, 0, 1), (2, 1, 1)} <= seen_kinds
    assert n_streams <= 3 or {(1, 3, 1), (2, 3, 1), (1, 2, 1)} <= seen_kinds


@pytest.mark.parametrize("n_streams,seed", [(5, 3)])
def test_state_after_decode_batch_equals_push(n_streams, seed):
    for call, _, twins in run_scenario(n_streams, seed):
        for i, (by_push, by_batch) in enumerate(twins):
            assert_same_state(by_batch, by_push, f"call {call} stream {i}")


def test_decode_batch_bf16_smoke():
    for call, results, twins in run_scenario(3, 4, dtype=torch.bfloat16):
        for i, by_push, by_batch in results:
            assert [c.numel() for c in by_batch] == [c.numel() for c in by_push], f"call {call} stream {i}"
            limit = twins[i][1].decoder.hift.config.audio_limit
            for c in by_batch:
                assert c.dtype == torch.float32 and torch.isfinite(c).all() and float(c.abs().max()) <= limit
    for by_push, by_batch in twins:
        assert by_batch.buffer == by_push.buffer and by_batch.chunk_sizes == by_push.chunk_sizes
        assert by_batch.finished and by_batch.hift_calls == by_push.hift_calls
        assert_chunks([m for m, _ in by_batch.trace], [m for m, _ in by_push.trace], BF16_MEL_RTOL, "bf16 mels")


def test_decode_batch_of_nothing():
    assert decode_batch([]) == []
    flow, hift = tiny_flow(), tiny_hift()
    a, b = twin_streams(make_decoder(flow, hift, N_STEPS), make_voice(11, 0), 0)
    assert decode_batch([(b, [], False)]) == [a.push([], False)] == [[]]
    assert decode_batch([(b, mixed_ids(3, 1), False)]) == [[]] and b.buffer == mixed_ids(3, 1)


# -- the ragged flow pieces ----------------------------------------------------------------


def test_flow_batches_match_single_streams():
    """setup_stream_batch / inference_chunk_batch vs setup_stream / inference_chunk: ragged prompts,
    chunks of every length in one batch, a final chunk beside non-final ones, cache truncation."""
    flow = tiny_flow()
    noise = torch.randn(1, 80, 2000, generator=torch.Generator().manual_seed(3))
    prompts = [pairs_of(n, 20 + n) for n in (23, 47, 9)]
    looks = [pairs_of(5, 30 + b) for b in range(3)]
    feats = [torch.randn(1, 2 * p.shape[1] + b, 80) for b, p in enumerate(prompts)]
    embs = [torch.randn(1, 192) for _ in prompts]
    left = 40  # small, so the DiT caches get truncated after a few chunks
    ref = [setup_stream(flow, p, la, f, e, noise, N_STEPS, left) for p, la, f, e in zip(prompts, looks, feats, embs)]
    got = setup_stream_batch(flow, prompts, looks, feats, embs, noise, N_STEPS, left)
    rounds = [  # (token frames incl. lookahead, last) per stream and round
        [(18, False), (27, False), (18, False)],
        [(27, False), (51, False), (7, True)],
        [(51, False), (13, True)],
        [(4, True)],
    ]
    def check(g, r, what: str) -> None:
        assert g.estimator.frames == r.estimator.frames, what
        for name in ("k", "v", "conv"):
            assert_close(getattr(g.estimator, name), getattr(r.estimator, name), RTOL, f"{what} {name}")
        for f in fields(EncoderChunkCache):
            assert_close(getattr(g.encoder, f.name), getattr(r.encoder, f.name), RTOL, f"{what} {f.name}")

    chunk_rounds_vs_single(flow, got, ref, rounds, noise, RTOL, check)
    assert ref[0].estimator.frames == ref[0].prompt_frames + left  # truncation was exercised


def test_encoder_ragged_chunk_matches_forward_chunk():
    flow = tiny_flow()
    enc = flow.encoder
    g = torch.Generator().manual_seed(4)
    xs = [torch.randn(1, n, 64, generator=g) for n in (9, 5, 14)]
    batch = torch.zeros(3, 14, 64)
    for b, x in enumerate(xs):
        batch[b, :x.shape[1]] = x[0]
    with torch.no_grad():
        _, cache0 = enc.forward_chunk(torch.randn(1, 11, 64, generator=g), None, last=False)
        _, cache2 = enc.forward_chunk(torch.randn(1, 20, 64, generator=g), None, last=False)
        caches, lasts = [cache0, None, cache2], [False, True, False]
        h, n_mel, new = enc.forward_chunk_ragged(batch, [x.shape[1] for x in xs], caches, lasts)
        for b, x in enumerate(xs):
            ref, ref_cache = enc.forward_chunk(x, caches[b], lasts[b])
            assert n_mel[b] == ref.shape[1]
            assert_close(h[b:b + 1, :n_mel[b]], ref, RTOL, f"row {b}")
            for f in fields(EncoderChunkCache):
                assert_close(getattr(new[b], f.name), getattr(ref_cache, f.name), RTOL, f"row {b} {f.name}")


def test_vocode_chunk_batch_matches_vocode_chunk():
    """Streams at different points (fresh, mid-stream, last chunk) and lengths: grouped by shape."""
    hift = tiny_hift()
    channels = hift.config.n_harmonic_channels
    g = torch.Generator().manual_seed(5)
    lengths = [[30, 48, 96, 17], [30, 48, 96], [96, 96], [9]]  # stream 3: a single, final chunk
    mels = [[torch.randn(1, 80, n, generator=g) - 5.0 for n in stream] for stream in lengths]
    ref_states = [HiFTStreamState() for _ in lengths]
    got_states = list(ref_states)
    draw_gens = [torch.Generator().manual_seed(60 + b) for b in range(len(lengths))]
    for k in range(max(map(len, lengths))):
        live = [b for b in range(len(lengths)) if k < len(lengths[b])]
        lasts = [k == len(lengths[b]) - 1 for b in live]
        draws = []
        for b in live:
            cached = got_states[b].mel.shape[2] if got_states[b].started else 0
            samples = (cached + mels[b][k].shape[2]) * hift.config.upsample_scale
            draws.append(draw_nsf(1, samples, channels, "cpu", draw_gens[b]))
        out = vocode_chunk_batch(hift, [mels[b][k] for b in live], [got_states[b] for b in live], lasts, draws)
        for j, b in enumerate(live):
            audio, state, source = out[j]
            ref_audio, ref_states[b], ref_source = hift.vocode_chunk(
                mels[b][k], ref_states[b], last=lasts[j], draws=draws[j], return_source=True)
            got_states[b] = state
            assert_close(audio, ref_audio, AUDIO_RTOL, f"chunk {k} stream {b} audio")
            assert_close(source, ref_source, AUDIO_RTOL, f"chunk {k} stream {b} source")
            for name in ("mel", "source", "speech"):
                assert_close(getattr(state, name), getattr(ref_states[b], name),
                             RTOL if name == "mel" else AUDIO_RTOL, name)
            assert state.finished == ref_states[b].finished


class PlainChunkDiT(torch.nn.Module):
    """An estimator stand-in with the exported graphs' signature (`editx.export.backends.DiTBackend`):
    no key mask, no ragged arguments."""

    def __init__(self, dit) -> None:
        super().__init__()
        self.dit = dit
        self.calls: list[int] = []  # batch rows per forward_chunk call

    def forward_chunk(self, x, mu, t, spks, cond, cache):
        self.calls.append(x.shape[0])
        return self.dit.forward_chunk(x, mu, t, spks, cond, cache)


def test_decode_batch_with_an_exported_dit_stand_in():
    """Equal shapes still batch on a stand-in DiT; ragged ones fall back to one stream at a time."""
    from editx.export.backends import flow_view

    flow = tiny_flow()
    stand_in = PlainChunkDiT(flow.decoder.estimator)
    decoder = make_decoder(flow_view(flow, dit=stand_in), tiny_hift(), 2)
    # two streams with equal prompt frames (11 and 14 ids), one longer prompt
    twins = [twin_streams(decoder, make_voice(n, 80 + n), n) for n in (11, 14, 26)]
    calls = [{0: 30, 1: 30}, {0: 40, 1: 40}, {0: 80, 1: 80, 2: 30}, {0: 80, 2: 40}]  # new ids per stream
    ids = [mixed_ids(250, 90 + i) for i in range(3)]
    fed = [0, 0, 0]
    for call in calls:
        picked = [(i, ids[i][fed[i]:fed[i] + n]) for i, n in call.items()]
        for i, n in call.items():
            fed[i] += n
        stand_in.calls.clear()
        by_push = [twins[i][0].push(chunk) for i, chunk in picked]
        pushed_calls = len(stand_in.calls)
        stand_in.calls.clear()
        by_batch = decode_batch([(twins[i][1], chunk, False) for i, chunk in picked])
        for (i, _), p, b in zip(picked, by_push, by_batch):
            assert_chunks(b, p, AUDIO_RTOL, f"stream {i}")
            assert_same_state(twins[i][1], twins[i][0], f"stream {i}")
        if 2 not in call:  # equal shapes: one estimator call per ODE step for both streams (2 x CFG rows)
            assert len(stand_in.calls) * 2 == pushed_calls and set(stand_in.calls) == {4}
        elif 1 not in call:  # a 48- and a 24-frame chunk: ragged, so one stream at a time, as push
            assert stand_in.calls == [2] * pushed_calls


# -- errors and isolation ------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_decoder() -> Token2Wav:
    return make_decoder(tiny_flow(), tiny_hift(), 2)


def snapshot(stream: Token2WavStream) -> tuple:
    return (list(stream.buffer), stream.chunk_sizes, stream.finished, stream.hift_calls, stream.flow_state,
            stream.hift_state, len(stream.trace))


def test_decode_batch_rejects_bad_work(small_decoder):
    s = small_decoder.stream(make_voice(11, 0))
    with pytest.raises(InvalidInputError, match=r"work\[1\]: this stream is already in the batch"):
        decode_batch([(s, [1], False), (s, [2], False)])
    with pytest.raises(InvalidInputError, match=r"work\[0\]: expected \(stream, ids, last\)"):
        decode_batch([(s, [1])])
    with pytest.raises(InvalidInputError, match=r"work\[0\]: expected a Token2WavStream"):
        decode_batch([("stream", [1], False)])
    done = small_decoder.stream(make_voice(11, 0))
    decode_batch([(done, [], True)])
    with pytest.raises(InvalidInputError, match="already finished"):
        decode_batch([(done, [1], False)])
    assert s.buffer == [] and not s.finished


def test_decode_batch_bad_ids_fail_only_their_entry(small_decoder):
    voice = make_voice(17, 1)
    good_push, good_batch = twin_streams(small_decoder, voice, 7)
    bad = small_decoder.stream(voice)
    ids = mixed_ids(40, 2)
    before = snapshot(bad)
    # without return_exceptions: raised before any model work, no stream changes
    with pytest.raises(InvalidInputError, match=r"work\[1\] ids"):
        decode_batch([(good_batch, ids, False), (bad, [5] * 4 + [99999], False)])
    assert snapshot(bad) == before and good_batch.buffer == [] and good_batch.flow_state is None
    # with return_exceptions: the bad entry gets its error, the good one its chunks
    out = decode_batch([(good_batch, ids, False), (bad, [-3] * 30, False)], return_exceptions=True)
    assert isinstance(out[1], InvalidInputError) and "negative token id" in str(out[1])
    assert snapshot(bad) == before
    assert_chunks(out[0], good_push.push(ids, False), AUDIO_RTOL, "good stream")
    assert_same_state(good_batch, good_push, "good stream")


def test_failure_inside_a_batch_is_retried_per_stream(small_decoder):
    """A stream whose HiFT draws fail mid-batch: the other streams of the group still match push."""
    voice_a, voice_b = make_voice(13, 2), make_voice(31, 3)
    a_push, a_batch = twin_streams(small_decoder, voice_a, 8)
    b_push, b_batch = twin_streams(small_decoder, voice_b, 9)

    def broken(call: int, n_samples: int):
        raise RuntimeError("draw provider failed")

    bad = small_decoder.stream(voice_b, draws=broken)
    ids = mixed_ids(45, 3)
    before = snapshot(bad)
    out = decode_batch([(a_batch, ids, False), (bad, ids, False), (b_batch, ids, False)], return_exceptions=True)
    assert isinstance(out[1], RuntimeError) and snapshot(bad) == before
    assert_chunks(out[0], a_push.push(ids, False), AUDIO_RTOL, "stream a")
    assert_chunks(out[2], b_push.push(ids, False), AUDIO_RTOL, "stream b")
    assert_same_state(a_batch, a_push, "stream a")
    with pytest.raises(RuntimeError, match="draw provider failed"):
        decode_batch([(bad, ids, False)])


def test_flow_batch_errors_name_the_entry():
    flow = tiny_flow()
    noise = torch.randn(1, 80, 500)
    prompt, look, feat, emb = pairs_of(10, 1), pairs_of(5, 2), torch.randn(1, 12, 80), torch.randn(1, 192)
    with pytest.raises(InvalidInputError, match=r"lookahead_pairs\[1\]: expected 3 token frames"):
        setup_stream_batch(flow, [prompt, prompt], [look, look[:, :2]], [feat, feat], [emb, emb], noise, 2)
    with pytest.raises(InvalidInputError, match=r"embeddings\[0\]"):
        setup_stream_batch(flow, [prompt], [look], [feat], [torch.randn(2, 192)], noise, 2)
    with pytest.raises(InvalidInputError, match="one entry per stream"):
        setup_stream_batch(flow, [prompt, prompt], [look], [feat], [emb], noise, 2)
    s2, s3 = (setup_stream(flow, prompt, look, feat, emb, noise, n) for n in (2, 3))
    chunk = pairs_of(30, 4)
    with pytest.raises(InvalidInputError, match="same n_timesteps"):
        inference_chunk_batch(flow, [chunk, chunk], [s2, s3], [False, False], noise)
    with pytest.raises(InvalidInputError, match=r"pairs\[1\]: a non-final chunk needs more than"):
        inference_chunk_batch(flow, [chunk, chunk[:, :3]], [s2, s2], [False, False], noise)
    with pytest.raises(InvalidInputError, match=r"state\[0\]: expected a FlowStreamState"):
        inference_chunk_batch(flow, [chunk], [None], [False], noise)
    with pytest.raises(InvalidInputError, match="lengths/caches/last"):
        flow.encoder.forward_chunk_ragged(torch.zeros(2, 5, 64), [5], [None], [False])


def test_vocode_batch_errors_name_the_entry():
    hift = tiny_hift()
    scale, channels = hift.config.upsample_scale, hift.config.n_harmonic_channels
    d = draw_nsf(1, 20 * scale, channels, "cpu")
    with pytest.raises(InvalidInputError, match=r"mel_chunks\[0\]: one stream per entry"):
        vocode_chunk_batch(hift, [torch.zeros(2, 80, 20)], [None], [False], [d])
    with pytest.raises(InvalidInputError, match=r"mel_chunk\[1\]: the first non-final chunk needs >= 8"):
        vocode_chunk_batch(hift, [torch.zeros(1, 80, 20), torch.zeros(1, 80, 5)], [None, None], [False, False],
                           [d, draw_nsf(1, 5 * scale, channels, "cpu")])
    with pytest.raises(InvalidInputError, match="one entry per stream"):
        vocode_chunk_batch(hift, [torch.zeros(1, 80, 20)], [None, None], [False], [d])
    with pytest.raises(InvalidInputError, match=r"draws\[1\]: draws.sine_noise: expected shape"):
        short = (d[0], d[1][:, 1:])
        vocode_chunk_batch(hift, [torch.zeros(1, 80, 20)] * 2, [None, None], [False, False], [d, short])


# -- with the Triton kernels (CUDA, or the interpreter under TRITON_INTERPRET=1) -----------
_KERNELS = _triton.HAS_TRITON and (bool(_triton.triton.knobs.runtime.interpret) or torch.cuda.is_available())


@pytest.mark.skipif(not _KERNELS, reason="Triton kernels need CUDA or TRITON_INTERPRET=1 set before pytest starts")
def test_decode_batch_with_triton_forced_matches_push():
    """Forced Triton DiT attention: ragged set-ups run the masked kernel, equal-shape chunks the cached
    kernel, and ragged chunks the cached kernel with a per-row mask over [new | cached] keys."""
    interpreted = bool(_triton.triton.knobs.runtime.interpret)
    device = "cuda" if torch.cuda.is_available() and not interpreted else "cpu"
    flow, hift = tiny_flow().to(device), tiny_hift().to(device)
    noise = torch.randn(1, 80, 1000, generator=torch.Generator().manual_seed(6)).to(device)
    decoder = Token2Wav(flow, hift, noise, n_timesteps=2)
    # prompts of 11 and 14 ids give equal prompt frames, 19 ids more
    twins = [twin_streams(decoder, make_voice(n, 40 + n), n) for n in (11, 14, 19)]
    calls = [  # per call: (stream, new ids, last)
        [(0, 30, False), (1, 30, False), (2, 30, False)],  # ragged set-up, then ragged caches
        [(0, 40, False), (1, 40, False)],  # equal chunk and cache lengths: no mask
        [(0, 17, True), (1, 3, True), (2, 51, True)],  # ragged flushes
    ]
    ids = [mixed_ids(sum(n for call in calls for j, n, _ in call if j == i), 70 + i) for i in range(3)]
    fed = [0, 0, 0]
    with kernel_backend("triton", "dit_attention"):
        for c, call in enumerate(calls):
            for i, p, b in push_and_batch(twins, ids, fed, call):
                # kernel (online softmax) vs reference: summation order again
                assert_chunks([x.cpu() for x in b], [x.cpu() for x in p], AUDIO_RTOL, f"call {c} stream {i}")
