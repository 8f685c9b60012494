"""Scheduler behaviour through the binding (and the Python reference), driven by a fake
engine with scripted tokens and EOS at chosen steps, over a simulated paged KV store."""
from __future__ import annotations

import pytest
from sched_harness import SECONDS_PER_ID, FakeEngine

from editx.engine.scheduler import (DecoderKind, FinishReason, RequestState, SchedulerConfig, make_scheduler,
                                    mixed_ids_for_frames)

IMPLS = ["cpp", "python"]


def config(**overrides) -> SchedulerConfig:
    values = dict(block_size=4, num_blocks=64, max_num_seqs=8, max_num_batched_tokens=16, max_model_len=128,
                  max_decoder_batch=4)
    values.update(overrides)
    return SchedulerConfig(**values)


def engine(impl: str, eos_after: dict[int, int] | None = None, **overrides) -> FakeEngine:
    """Fake engine whose request r emits EOS as its generated token number eos_after[r]."""
    eos_after = eos_after or {}
    return FakeEngine(make_scheduler(config(**overrides), impl),
                      stop=lambda rid, n: n >= eos_after.get(rid, 10**9))


@pytest.fixture(params=IMPLS)
def impl(request) -> str:
    return request.param


def test_chunked_prefill_then_decode_then_eos(impl):
    eng = engine(impl, eos_after={0: 3}, max_num_batched_tokens=8)
    rid = eng.submit(list(range(1, 21)))  # 20 tokens: chunks of 8, 8, 4
    plans = [eng.step() for _ in range(3)]
    assert [p.prefill_starts.tolist() for p in plans] == [[0], [8], [16]]
    assert [p.prefill_counts.tolist() for p in plans] == [[8], [8], [4]]
    assert [p.prefill_is_last.tolist() for p in plans] == [[False], [False], [True]]
    decode = eng.step()
    assert decode.decode_req_ids.tolist() == [rid] and decode.decode_positions.tolist() == [20]
    eng.step()  # third generated token is EOS: finish() frees the KV
    assert eng.sched.state(rid) == RequestState.ENDED  # 3 ids: too few for the decoder
    assert eng.sched.stats()["free_blocks"] == 64
    assert eng.step().ended == [(rid, FinishReason.EOS)]  # reported with the next plan


def test_eos_at_chosen_steps_ends_each_request_after_its_audio(impl):
    eng = engine(impl, eos_after={0: 40, 1: 7, 2: 90})
    for n in (5, 9, 13):
        eng.submit(list(range(100, 100 + n)))
    eng.run_until_idle()
    assert eng.ended == {0: FinishReason.EOS, 1: FinishReason.EOS, 2: FinishReason.EOS}
    for rid, n_gen in ((0, 40), (1, 7), (2, 90)):
        s = eng.streams[rid]
        assert s.generated == n_gen
        assert s.fed == n_gen - 1  # every generated id but the last reached the decoder


def test_decodes_are_never_starved_by_a_long_prefill(impl):
    eng = engine(impl, max_num_batched_tokens=8)
    a = eng.submit([1, 2, 3])
    eng.step()
    eng.submit(list(range(200, 264)))  # 64-token prompt
    for _ in range(8):
        p = eng.step()
        assert p.decode_req_ids.tolist() == [a]
        assert p.num_scheduled_tokens == 8


def test_max_prefill_chunk_and_max_num_seqs(impl):
    eng = engine(impl, max_prefill_chunk=5, max_num_seqs=2, max_num_batched_tokens=32)
    for k in range(3):
        eng.submit(list(range(100 * k + 1, 100 * k + 13)))
    p = eng.step()
    assert p.prefill_counts.tolist() == [5, 5]
    assert eng.sched.stats()["waiting"] == 1


def test_admission_by_priority_then_submission(impl):
    eng = engine(impl, max_num_seqs=1)
    eng.submit([1, 2], priority=3)
    urgent = eng.submit([3, 4], priority=0)
    later = eng.submit([5, 6], priority=0)
    assert eng.step().prefill_req_ids.tolist() == [urgent]
    eng.cancel(urgent)
    assert eng.step().prefill_req_ids.tolist() == [later]


def test_preemption_takes_least_important_most_recent_and_recomputes(impl):
    eng = engine(impl, block_size=2, num_blocks=10, max_model_len=20, enable_prefix_caching=False)
    a = eng.submit([1, 2, 3], priority=0)
    b = eng.submit([4, 5, 6], priority=2)
    c = eng.submit([7, 8, 9], priority=0)
    preempted = []
    for _ in range(12):
        preempted += eng.step().preempted_req_ids.tolist()
        if preempted:
            break
    assert preempted == [b]
    assert eng.sched.state(b) == RequestState.WAITING and eng.sched.block_table(b) == []
    assert {eng.sched.state(a), eng.sched.state(c)} == {RequestState.RUNNING}
    eng.cancel(a)
    generated = eng.streams[b].generated
    p = eng.step()
    assert b in p.prefill_req_ids.tolist()
    i = p.prefill_req_ids.tolist().index(b)
    assert p.prefill_starts[i] == 0 and p.prefill_counts[i] == 3 + generated  # prompt + its sampled ids
    eng.cancel(b)
    eng.cancel(c)
    eng.run_until_idle()


def test_voice_prefix_is_prefilled_once_and_shared(impl):
    eng = engine(impl, block_size=4, max_num_batched_tokens=32)
    voice = list(range(1000, 1022))  # 22 tokens: 5 full blocks + 2 in a partial block
    first = eng.submit(voice + [1, 2, 3])
    eng.step()
    eng.step()
    later = [eng.submit(voice + [10 * k + 5, 10 * k + 6]) for k in range(3)]
    p = eng.step()
    assert p.prefill_req_ids.tolist() == later
    assert p.prefill_starts.tolist() == [22, 22, 22]  # 20 shared + 2 copied from the partial block
    assert len(p.copies) == 3
    first_table = eng.sched.block_table(first)
    for i, rid in enumerate(later):
        table = p.block_table(i).tolist()
        assert table[:5] == first_table[:5]
        assert [first_table[5], table[5]] in p.copies.tolist()
    assert eng.sched.stats()["prefix_hit_tokens"] == 3 * 22
    eng.run_until_idle()  # the fake KV store checked every read


def test_shared_blocks_are_freed_only_when_the_last_user_ends(impl):
    eng = engine(impl, block_size=4, num_blocks=32)
    prompt = list(range(50, 63))
    a = eng.submit(prompt)
    eng.step()
    eng.step()
    b = eng.submit(prompt)
    eng.step()
    shared = eng.sched.block_table(a)[:3]
    assert eng.sched.block_table(b)[:3] == shared
    eng.cancel(a)
    eng.step()
    assert eng.sched.block_table(b)[:3] == shared
    used = eng.sched.stats()["used_blocks"]
    assert used == len(eng.sched.block_table(b))  # a's private blocks were freed, the shared ones kept
    eng.cancel(b)
    assert eng.sched.stats()["free_blocks"] == 32
    c = eng.submit(prompt)  # freed blocks stay cached until evicted
    p = eng.step()
    assert p.prefill_starts.tolist() == [12] and p.block_table(0).tolist()[:3] == shared
    eng.cancel(c)
    eng.run_until_idle()


def test_identical_prompt_computes_at_least_its_last_token(impl):
    eng = engine(impl)
    eng.submit(list(range(8)))
    eng.step()
    eng.step()
    eng.submit(list(range(8)))
    p = eng.step()
    assert p.prefill_starts.tolist() == [7] and p.prefill_counts.tolist() == [1]


def test_failed_and_cancelled_requests_free_everything(impl):
    eng = engine(impl)
    a, b, c = (eng.submit(list(range(k, k + 9))) for k in (1, 100, 200))
    eng.step()
    assert eng.fail(a)
    assert eng.cancel(b)
    assert not eng.cancel(b)
    eng.step()
    assert eng.ended == {a: FinishReason.ERROR, b: FinishReason.CANCELLED}
    eng.cancel(c)
    eng.run_until_idle()


def _decoder_items(impl: str, n_generated: int, **overrides) -> list[tuple[int, int, int, int]]:
    eng = engine(impl, eos_after={0: n_generated}, max_model_len=1024, num_blocks=300, **overrides)
    eng.submit([1, 2, 3])
    eng.run_until_idle()
    return eng.streams[0].items


@pytest.mark.parametrize("n_generated", [4, 6, 7, 30, 31, 36, 71, 200, 333])
def test_decoder_chunks_match_the_streaming_decoders_own_plan(impl, n_generated):
    from editx.models.flow.streaming import plan_stream_chunks  # the decoder's rule (spec §6)

    kinds = {"setup": DecoderKind.SETUP, "chunk": DecoderKind.CHUNK, "flush": DecoderKind.FINAL}
    n_ids = n_generated - 1  # the last generated id never reaches the decoder (spec §4.6)
    want = [(kinds[a.kind], start, a.advance if a.kind != "setup" else 0, a.take)
            for _, a, start in plan_stream_chunks(n_ids)]
    if want and want[-1][0] == DecoderKind.SETUP:  # set-up on the very last id: we flush (Token2WavStream)
        want.append((DecoderKind.FINAL, 0, n_ids, n_ids))
    assert _decoder_items(impl, n_generated) == want


def test_decoder_sizes_follow_the_config(impl):
    items = _decoder_items(impl, 100, decoder_chunk_frames=(6, 9), decoder_holdback_ids=0)
    sizes = [(k, n) for k, _, n, _ in items]
    look = mixed_ids_for_frames(3)
    assert sizes[:4] == [(DecoderKind.SETUP, 0), (DecoderKind.CHUNK, 10), (DecoderKind.CHUNK, 15),
                         (DecoderKind.CHUNK, 15)]
    assert sum(n for _, n in sizes) == 100 and items[1][3] == 10 + look


def test_decoder_serves_the_most_urgent_streams_first(impl):
    eng = engine(impl, max_decoder_batch=2, max_num_batched_tokens=64)
    eng.hold_decoder = True
    rids = []
    for k in range(4):  # arrivals 0.1 s apart: the earliest arrival is the most urgent
        rids.append(eng.submit([k + 1, k + 2]))
        eng.now += 0.1
    seen = []
    for _ in range(40):
        p = eng.step()
        seen.append([d.req_id for d in p.decoder])
        eng.complete_decoder()
        if any(len(s) == 2 for s in seen) and len([d for s in seen for d in s]) >= 8:
            break
    first_setups = [s for s in seen if s][:2]
    assert first_setups == [[rids[0], rids[1]], [rids[2], rids[3]]]


def test_one_item_in_flight_per_stream_until_done(impl):
    eng = engine(impl, max_model_len=256, num_blocks=80)
    eng.hold_decoder = True
    eng.submit([1, 2])
    issued = 0
    for _ in range(80):
        p = eng.step()
        issued += len(p.decoder)
        assert len(eng.pending) <= 1
    assert issued == 1  # the set-up was never reported done, so nothing else was planned
    eng.complete_decoder()
    assert len(eng.step().decoder) == 1


def test_ttfa_misses_and_underruns_are_counted(impl):
    eng = engine(impl, max_model_len=256, num_blocks=80, ttfa_target_s=0.5)
    eng.hold_decoder = True
    eng.submit([1, 2])
    for _ in range(40):
        eng.step(dt=0.001)
        eng.complete_decoder()
    stats = eng.sched.stats()
    assert stats["ttfa_misses"] == 0 and stats["underruns"] == 0
    first_audio = sum(n for k, _, n, _ in eng.streams[0].items if k != DecoderKind.SETUP) * SECONDS_PER_ID
    eng.now += first_audio + 1.0  # the engine stalls past the end of the emitted audio
    for _ in range(60):
        eng.step(dt=0.001)
        eng.complete_decoder()
    assert eng.sched.stats()["underruns"] >= 1
    late = eng.submit([3, 4])
    eng.now += 1.0  # its first audio comes > ttfa_target after arrival
    for _ in range(40):
        eng.step(dt=0.001)
        eng.complete_decoder()
    assert eng.sched.stats()["ttfa_misses"] == 1
    eng.cancel(late)


def test_progress_reports_generated_and_consumed_ids(impl):
    eng = engine(impl, eos_after={0: 45})
    rid = eng.submit([1, 2, 3, 4, 5])
    for _ in range(32):  # 32 generated, 31 decodable: set-up and the first 25-id chunk
        eng.step()
    p = eng.sched.progress(rid)
    assert p["state"] == RequestState.RUNNING and p["num_prompt_tokens"] == 5
    assert p["generated"] == eng.streams[rid].generated == p["num_tokens"] - 5
    assert p["decoder_consumed"] == eng.streams[rid].fed == 25
    assert p["audio_seconds"] == pytest.approx(25 * SECONDS_PER_ID)
    eng.run_until_idle()
    assert eng.sched.progress(rid)["state"] == RequestState.ENDED
