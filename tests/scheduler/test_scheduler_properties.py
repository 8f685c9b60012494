"""Property tests: random submit / step / cancel / fail / decoder-completion sequences under
random policies. The fake engine checks every plan against a simulated paged KV store
(sharing, copy-on-write and preemption must never let a request read another prefix's KV),
the token budget, the pool, the decoder protocol, and `check_invariants()` after every step
(ref counts == block-table users, free list == unreferenced blocks, no stale index entry),
so a leaked or double-freed block, or a shared block freed while still used, fails at once.
Every request must end exactly once and the pool must be whole again at the end.

The differential test runs the same sequence on the C++ scheduler and the Python reference
and requires identical plans and stats at every step.
"""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sched_harness import FakeEngine

from editx.engine.scheduler import SchedulerConfig, make_scheduler, plan_to_dict

MAX_MODEL_LEN = 64
VOICES = [list(range(1000, 1000 + n)) for n in (9, 14, 5)]  # shared prompt prefixes


@st.composite
def policies(draw) -> SchedulerConfig:
    block_size = draw(st.sampled_from([1, 2, 3, 4, 8]))
    min_blocks = -(-MAX_MODEL_LEN // block_size)
    max_num_seqs = draw(st.sampled_from([4, 6, 2, 1]))
    return SchedulerConfig(
        block_size=block_size,
        num_blocks=draw(st.integers(min_blocks, 2 * min_blocks)),
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=draw(st.integers(max_num_seqs, 40)),
        max_prefill_chunk=draw(st.integers(0, 9)),
        max_model_len=MAX_MODEL_LEN,
        admission_reserve_blocks=draw(st.integers(0, 2)),
        enable_prefix_caching=draw(st.booleans()),
        max_decoder_batch=draw(st.integers(1, 3)),
        ttfa_target_s=draw(st.sampled_from([0.01, 0.25])),
        decoder_chunk_frames=draw(st.sampled_from([(3,), (3, 6), (15, 24, 48)])),
        decoder_holdback_ids=draw(st.integers(0, 2)),
    )


# (voice prefix or none, own tail from a tiny alphabet so tails collide too, priority,
# tokens generated before EOS)
submit_op = st.tuples(st.just("submit"), st.sampled_from([0, 1, 2, None]), st.lists(st.integers(1, 3), max_size=12),
                      st.integers(0, 2), st.sampled_from([60, 35, 20, 7, 4, 1]))
# Weighted towards submissions and steps so that pools fill up: preemption, prefix hits and
# copies happen in most examples, not only in rare ones.
operations = st.lists(st.one_of(
    submit_op, submit_op, submit_op,
    st.tuples(st.just("step"), st.integers(1, 12)),
    st.tuples(st.just("step"), st.integers(1, 12)),
    st.tuples(st.sampled_from(["cancel", "fail"]), st.integers(0, 50)),
    st.tuples(st.just("decoder"), st.integers(0, 2**16)),
), min_size=8, max_size=50)


class Driver:
    """Applies one operation list to a FakeEngine (decoder completions held and released in
    a seeded order, so items stay in flight across steps)."""

    def __init__(self, config: SchedulerConfig, impl: str) -> None:
        self.eos_after: dict[int, int] = {}
        self.eng = FakeEngine(make_scheduler(config, impl), stop=lambda rid, n: n >= self.eos_after[rid],
                              hold_decoder=True)
        self.trace: list = []

    def apply(self, op: tuple) -> None:
        eng, kind = self.eng, op[0]
        if kind == "submit":
            _, voice, tail, priority, n_gen = op
            prompt = (VOICES[voice] if voice is not None else []) + tail or [7]
            rid = eng.submit(prompt[:MAX_MODEL_LEN], priority=priority)
            self.eos_after[rid] = n_gen
        elif kind == "step":
            for _ in range(op[1]):
                self.trace.append(plan_to_dict(eng.step()))
        elif kind in ("cancel", "fail") and eng.streams:
            rid = op[1] % len(eng.streams)
            self.trace.append((kind, rid, eng.cancel(rid) if kind == "cancel" else eng.fail(rid)))
        elif kind == "decoder" and eng.pending:
            seed = op[1]
            order = sorted(range(len(eng.pending)), key=lambda i: hash((seed, i)))[: 1 + seed % len(eng.pending)]
            eng.complete_decoder(order)
        self.trace.append(eng.sched.stats())
        self.trace.append([eng.sched.progress(rid) for rid in eng.streams])
        eng.sched.check_invariants()

    def finish(self) -> None:
        self.eng.run_until_idle()
        self.trace.append(self.eng.sched.stats())


@settings(max_examples=250, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=policies(), ops=operations, impl=st.sampled_from(["cpp", "python"]))
def test_random_operations_keep_every_invariant(config, ops, impl):
    driver = Driver(config, impl)
    for op in ops:
        driver.apply(op)
    driver.finish()
    eng = driver.eng
    assert sorted(eng.ended) == sorted(eng.streams)  # every request ended, exactly once (checked per event)
    stats = eng.sched.stats()
    assert stats["free_blocks"] == config.num_blocks and stats["running"] == stats["waiting"] == 0
    assert stats["ended"] == stats["submitted"] == len(eng.streams)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=policies(), ops=operations)
def test_cpp_and_python_schedulers_make_identical_plans(config, ops):
    cpp, py = Driver(config, "cpp"), Driver(config, "python")
    for op in ops:
        cpp.apply(op)
        py.apply(op)
        assert cpp.trace == py.trace
    cpp.finish()
    py.finish()
    assert cpp.trace == py.trace
