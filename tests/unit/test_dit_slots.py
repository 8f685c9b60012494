"""`DiTSlots` (streaming DiT caches in a fixed slot pool, static-shape solves) vs the packed-tensor
streaming path: same mels, same caches (read back with `SlotCache.materialize`), same truncation,
and slots that always return to the pool."""
from __future__ import annotations

import gc

import pytest
import torch

from decoder_testing import (assert_close, chunk_rounds_vs_single, make_decoder, make_voice, mixed_ids,
                             pairs_of, tiny_flow, tiny_hift)

from editx.engine.token2wav import decode_batch
from editx.errors import InvalidInputError
from editx.models.flow import inference_chunk, setup_stream
from editx.models.flow.dit_slots import DiTSlots, SlotCache, SlotRow
from editx.models.flow.streaming import inference_chunk_batch, setup_stream_batch

# fp32 tolerance relative to the peak, as in test_batched_decoder.py: the pool path differs from the
# packed path only in summation order (keys in another order, masked pool frames add exact zeros,
# other batch sizes). Measured ≤ 1e-6 relative on mels and caches; a wrong ring slot, a padded frame
# seen by attention or a stale cache moves them by > 1e-2.
RTOL = 1e-5
N_STEPS = 4
LEFT = 40  # small left context: truncation (incl. a partly kept chunk) happens after two chunks
MAX_CHUNK = 102  # widest chunk in mel frames: 51 token frames of a flush


def make_slots(flow, streams: int = 5, prompt_capacity: int = 160, left: int = LEFT, n_steps: int = N_STEPS,
               max_chunk: int = MAX_CHUNK) -> DiTSlots:
    return DiTSlots(flow.decoder, n_steps, streams, prompt_capacity, left, max_chunk, mode="static",
                    batch_buckets=(1, 2, 4), width_step=24)


def setup_inputs(n_streams: int, prompt_ids=(23, 47, 9, 31)):
    prompts = [pairs_of(n, 20 + n) for n in prompt_ids[:n_streams]]
    looks = [pairs_of(5, 30 + b) for b in range(n_streams)]
    feats = [torch.randn(1, 2 * p.shape[1] + b, 80, generator=torch.Generator().manual_seed(b))
             for b, p in enumerate(prompts)]
    embs = [torch.randn(1, 192, generator=torch.Generator().manual_seed(10 + b)) for b in range(n_streams)]
    return prompts, looks, feats, embs


def assert_caches_close(got: SlotCache, ref, what: str) -> None:
    packed = got.materialize()
    assert packed.frames == ref.frames, f"{what}: cached frames"
    for name in ("k", "v", "conv"):
        assert_close(getattr(packed, name), getattr(ref, name), RTOL, f"{what} {name}")


ROUNDS = [  # (token frames incl. lookahead, last) per stream and round; odd widths, a ragged batch
    [(18, False), (27, False), (18, False)],
    [(27, False), (51, False), (7, True)],
    [(51, False), (13, True)],
    [(21, False)],
    [(4, True)],
]


def test_slot_streams_match_packed_streams():
    """Ragged set-ups and chunk batches (padded to batch bucket 4 and to width buckets), flushes
    beside chunks, truncation keeping part of a chunk: mels and caches equal the packed path's."""
    flow = tiny_flow()
    noise = torch.randn(1, 80, 2000, generator=torch.Generator().manual_seed(3))
    slots = make_slots(flow)
    prompts, looks, feats, embs = setup_inputs(3)
    ref = [setup_stream(flow, p, la, f, e, noise, N_STEPS, LEFT) for p, la, f, e in zip(prompts, looks, feats, embs)]
    got = setup_stream_batch(flow, prompts, looks, feats, embs, noise, N_STEPS, LEFT, slots=slots)
    assert all(isinstance(s.estimator, SlotCache) for s in got) and slots.free_slots == 2
    for b in range(3):
        assert_caches_close(got[b].estimator, ref[b].estimator, f"set-up {b}")
    def check(g, r, what: str) -> None:
        assert g.noise_offset == r.noise_offset, what
        assert_caches_close(g.estimator, r.estimator, what)

    chunk_rounds_vs_single(flow, got, ref, ROUNDS, noise, RTOL, check)
    assert ref[0].estimator.frames == ref[0].prompt_frames + LEFT  # truncation was exercised
    assert len(got[0].estimator.segments) > 1  # ... with the kept frames spread over chunks


def test_single_stream_calls_use_the_slot():
    """`inference_chunk` (one stream) on a slot state runs in the pool too, and matches."""
    flow = tiny_flow()
    noise = torch.randn(1, 80, 2000, generator=torch.Generator().manual_seed(4))
    slots = make_slots(flow, streams=1)
    prompts, looks, feats, embs = setup_inputs(1)
    (got,) = setup_stream_batch(flow, prompts, looks, feats, embs, noise, N_STEPS, LEFT, slots=slots)
    ref = setup_stream(flow, prompts[0], looks[0], feats[0], embs[0], noise, N_STEPS, LEFT)
    for k, frames in enumerate((27, 33, 45)):
        pairs = pairs_of(5 * frames // 3 + 5, 7 + k)[:, :frames]
        mel_got, got = inference_chunk(flow, pairs, got, False, noise)
        mel_ref, ref = inference_chunk(flow, pairs, ref, False, noise)
        assert_close(mel_got, mel_ref, RTOL, f"chunk {k}")
    assert_caches_close(got.estimator, ref.estimator, "after 3 chunks")


def test_mixed_batch_of_slot_and_packed_streams():
    """A batch holding both kinds runs them as two batches, results back in the callers' order."""
    flow = tiny_flow()
    noise = torch.randn(1, 80, 2000, generator=torch.Generator().manual_seed(5))
    slots = make_slots(flow, streams=1)
    prompts, looks, feats, embs = setup_inputs(2)
    states = setup_stream_batch(flow, prompts, looks, feats, embs, noise, N_STEPS, LEFT, slots=slots)
    assert slots.free_slots == 1  # two streams, one slot: all-or-nothing, so both are packed
    (slot_state,) = setup_stream_batch(flow, prompts[1:], looks[1:], feats[1:], embs[1:], noise, N_STEPS, LEFT,
                                       slots=slots)
    mixed = [states[0], slot_state]
    pairs = [pairs_of(35, 40)[:, :21], pairs_of(35, 41)[:, :18]]
    mels, new = inference_chunk_batch(flow, pairs, mixed, [False, True], noise)
    assert isinstance(new[1].estimator, SlotCache) and not isinstance(new[0].estimator, SlotCache)
    for b in range(2):
        ref_mel, _ = inference_chunk(flow, pairs[b], states[b], b == 1, noise)
        assert_close(mels[b], ref_mel, RTOL, f"stream {b}")


def test_streams_without_a_fitting_slot_use_packed_caches():
    flow = tiny_flow()
    noise = torch.randn(1, 80, 2000, generator=torch.Generator().manual_seed(6))
    prompts, looks, feats, embs = setup_inputs(1, prompt_ids=(47,))
    cases = {
        "prompt longer than a slot": make_slots(flow, prompt_capacity=20),
        "other ODE step count": make_slots(flow, n_steps=N_STEPS + 1),
        "other left context": make_slots(flow, left=LEFT + 1),
    }
    for what, slots in cases.items():
        (state,) = setup_stream_batch(flow, prompts, looks, feats, embs, noise, N_STEPS, LEFT, slots=slots)
        assert not isinstance(state.estimator, SlotCache), what
        assert slots.free_slots == slots.streams, what


def test_leases_return_to_the_pool():
    flow = tiny_flow()
    slots = make_slots(flow, streams=3)
    leases = slots.acquire(3)
    assert slots.free_slots == 0 and slots.acquire(1) is None
    leases[0].release()
    leases[0].release()  # idempotent: the slot is not freed twice
    assert slots.free_slots == 1
    del leases
    gc.collect()
    assert slots.free_slots == 3  # dropped leases give their slots back


def test_solve_rejects_bad_rows():
    flow = tiny_flow()
    slots = make_slots(flow, streams=2)
    lease = slots.acquire(1)[0]
    mu = torch.zeros(1, 80, 10)
    spks = torch.zeros(1, 80)
    ok = SlotRow(lease, ring=True, head=0, n_valid=10, prompt=0, ring_frames=(), conv=None)
    lease.release()
    with pytest.raises(InvalidInputError, match="released"):
        slots.solve(mu, spks, mu, mu, [ok])
    lease = slots.acquire(1)[0]
    with pytest.raises(InvalidInputError, match="n_valid"):
        slots.solve(mu, spks, mu, mu, [SlotRow(lease, True, 0, 11, 0, (), None)])
    wide = torch.zeros(1, 80, MAX_CHUNK + 1)
    with pytest.raises(InvalidInputError, match="do not fit"):
        slots.solve(wide, spks, wide, wide, [SlotRow(lease, True, 0, MAX_CHUNK + 1, 0, (), None)])
    with pytest.raises(InvalidInputError, match="streams"):
        DiTSlots(flow.decoder, N_STEPS, 0, 10, LEFT, MAX_CHUNK)


@pytest.mark.parametrize("batched", [True, False])
def test_token2wav_streams_with_slots_match_and_free_their_slots(batched):
    """Whole streams through Token2WavStream (push / decode_batch) with a slot pool attached: audio
    equal to a decoder without one; every slot is back once the streams finish or are closed."""
    flow, hift = tiny_flow(), tiny_hift()
    plain = make_decoder(flow, hift, N_STEPS)
    pooled = make_decoder(flow, hift, N_STEPS)
    pooled.slots = DiTSlots.for_flow(flow, N_STEPS, 3, 200)
    voices = [make_voice(20 + 5 * b, b) for b in range(3)]
    ids = [mixed_ids(170 + 35 * b, 50 + b) for b in range(3)]
    ref = [plain.stream(v, generator=torch.Generator().manual_seed(b)) for b, v in enumerate(voices)]
    got = [pooled.stream(v, generator=torch.Generator().manual_seed(b)) for b, v in enumerate(voices)]
    ref_audio = [torch.cat(s.push(x, last=True)) for s, x in zip(ref, ids)]
    if batched:
        got_audio = [[] for _ in got]
        for start in range(0, max(map(len, ids)), 40):  # the engine feeds ids in rounds like this
            live = [b for b in range(3) if start < len(ids[b])]
            work = [(got[b], ids[b][start:start + 40], start + 40 >= len(ids[b])) for b in live]
            for b, chunks in zip(live, decode_batch(work)):
                got_audio[b].extend(chunks)
        got_audio = [torch.cat(c) for c in got_audio]
    else:
        got_audio = [torch.cat(s.push(x, last=True)) for s, x in zip(got, ids)]
    for b in range(3):
        assert_close(got_audio[b], ref_audio[b], 5e-4, f"stream {b}")  # AUDIO_RTOL of test_batched_decoder
    assert pooled.slots.free_slots == 3
    half = pooled.stream(voices[0], generator=torch.Generator().manual_seed(0))
    half.push(ids[0][:60])
    assert pooled.slots.free_slots == 2
    half.close()
    assert pooled.slots.free_slots == 3 and half.finished


def test_warmup_runs_every_chunk_bucket_and_frees_its_slots():
    flow = tiny_flow()
    slots = make_slots(flow, streams=3)
    runs = slots.warmup()
    chunk_buckets = len(slots.batch_buckets) * len(slots.chunk_widths)
    setup_buckets = len([w for w in slots.widths if w <= slots.prompt_capacity])
    assert runs == chunk_buckets + setup_buckets == slots.solves
    # Worked out from make_slots' sizes, not from the pool: chunks run at the widest chunk (102) in batch
    # buckets 1, 2, 3; set-ups at widths 24, 48, ..., 144 (width_step 24), 102 and 160 (the capacity).
    assert runs == 3 + 8
    setup_widths = (24, 48, 72, 96, 102, 120, 144, 160)
    assert set(slots._static) == {(b, 102) for b in (1, 2, 3)} | {(1, w) for w in setup_widths}
    assert slots.free_slots == 3 and slots.batch_buckets == (1, 2, 3)


def test_auto_slot_count_fits_a_share_of_free_device_memory(monkeypatch):
    """decoder_slots=None on CUDA: 16 streams, fewer when the pool would take > 30% of free memory."""
    from editx.engine import token2wav

    flow = tiny_flow()
    cfg, prompt = flow.cfg, 400
    frames = prompt + cfg.stream_att_left_context + 2 * 2 * (max(cfg.chunk_sizes) + cfg.encoder.pre_lookahead_len)
    dit = cfg.dit
    per_stream = 2 * 2 * N_STEPS * dit.depth * frames * dit.num_heads * dit.head_dim * 4  # fp32 K and V, CFG rows
    for free, want in ((10**12, 16), (per_stream * 3.5 / 0.3, 2), (per_stream / 0.3, 0)):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, f=free: (int(f), int(2 * f)))
        assert token2wav._auto_slot_streams(flow, N_STEPS, prompt) == want


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_replays_match_eager_solves_on_the_pool():
    """mode='cuda' (captured graphs, replayed with new inputs, incl. a padded batch bucket) vs
    mode='static' (the same solve run eagerly) on twin pools: same mels, same caches."""
    flow = tiny_flow().cuda()
    noise = torch.randn(1, 80, 2000, generator=torch.Generator().manual_seed(7)).cuda()
    prompts, looks, feats, embs = setup_inputs(3)
    runs = {}
    for mode in ("static", "cuda"):
        slots = DiTSlots(flow.decoder, N_STEPS, 3, 160, LEFT, MAX_CHUNK, mode=mode, batch_buckets=(1, 2, 4))
        states = setup_stream_batch(flow, prompts, looks, feats, embs, noise, N_STEPS, LEFT, slots=slots)
        mels = []
        for r, frames in enumerate((18, 27, 51, 27)):  # the graph of width 30 or 48 replays with new data
            pairs = [pairs_of(5 * frames // 3 + 5, 10 * r + b)[:, :frames].cuda() for b in range(3)]
            out, states = inference_chunk_batch(flow, pairs, states, [False] * 3, noise)
            mels.append(out)
        runs[mode] = (mels, states, slots)
    (mels_e, states_e, _), (mels_g, states_g, slots_g) = runs["static"], runs["cuda"]
    assert slots_g.captured and slots_g.graph_error is None
    for r, (a, b) in enumerate(zip(mels_g, mels_e)):
        for s in range(3):
            # same kernels in the same order; a graph may still pick another cuBLAS algorithm than eager
            assert_close(a[s].cpu(), b[s].cpu(), RTOL, f"chunk {r} stream {s}")
    for s in range(3):
        assert_caches_close(states_g[s].estimator, states_e[s].estimator.materialize(), f"stream {s}")
