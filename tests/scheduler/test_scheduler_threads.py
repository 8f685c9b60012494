"""Thread safety through the binding: clients submit and cancel while the engine thread
steps (the C++ step releases the GIL); every request still ends exactly once and no block
leaks."""
from __future__ import annotations

import collections
import random
import threading
import time

import pytest

from editx.engine.scheduler import FinishReason, SchedulerConfig, make_scheduler


@pytest.mark.parametrize("impl", ["cpp", "python"])
def test_submit_and_cancel_from_other_threads_while_stepping(impl):
    cfg = SchedulerConfig(block_size=4, num_blocks=64, max_num_seqs=8, max_num_batched_tokens=32, max_model_len=96)
    sched = make_scheduler(cfg, impl)
    stop = threading.Event()
    submitted: list[int] = []  # list.append is atomic
    errors: list[BaseException] = []

    def client(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                prompt = [rng.randrange(1, 4) for _ in range(rng.randrange(1, 30))]  # collide: prefix hits
                submitted.append(sched.submit(prompt, arrival=0.0))
                if rng.random() < 0.4:
                    sched.cancel(rng.choice(submitted))  # may race with the engine ending it
                time.sleep(0.0005)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    ended: dict[int, int] = {}
    try:
        _engine_loop(sched, cfg, ended, steps=300)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    for rid in submitted:
        sched.cancel(rid)
    _record_ended(ended, sched.step(1e6).ended)
    assert sorted(ended) == sorted(submitted)
    stats = sched.stats()
    assert stats["free_blocks"] == cfg.num_blocks and stats["ended"] == len(submitted)
    sched.check_invariants()


def _engine_loop(sched, cfg: SchedulerConfig, ended: dict[int, int], steps: int) -> None:
    """The engine side of the protocol; any call may find its request cancelled meanwhile."""
    generated: collections.Counter = collections.Counter()
    for i in range(steps):
        now = 0.02 * i
        plan = sched.step(now)
        _record_ended(ended, plan.ended)
        samples = [(int(r), int(c)) for r, c, last in zip(plan.prefill_req_ids, plan.context_lens,
                                                           plan.prefill_is_last) if last]
        samples += list(zip(plan.decode_req_ids.tolist(), (plan.decode_positions + 1).tolist()))
        for rid, context in samples:
            if context == cfg.max_model_len:
                sched.finish(rid, FinishReason.LENGTH)
            elif sched.append_tokens(rid, [7]):
                generated[rid] += 1
                if generated[rid] >= 10 + rid % 40 or context + 1 == cfg.max_model_len:
                    sched.finish(rid, FinishReason.EOS)
        for d in plan.decoder:
            sched.decoder_done(d.req_id, d.num_ids * 0.024, now)
        if i % 50 == 0:
            sched.check_invariants()


def _record_ended(ended: dict[int, int], events) -> None:
    for rid, reason in events:
        assert rid not in ended, f"request {rid} ended twice"
        ended[rid] = reason
