"""Request scheduler: which requests run each engine step, with which KV blocks, and which
streams get a decoder (token2wav) chunk. It never touches tensors: only request ids, token
ids and counts, block ids and times.

Two implementations with one API and one policy:
  `Scheduler`   the C++ scheduler `editx._scheduler` (the runtime's; microseconds per step)
  `PyScheduler` a straightforward pure-Python copy, for tests (differential oracle) and as
                the benchmark baseline. Nothing falls back to it: choose it explicitly
                (`make_scheduler(config, impl="python")`).
This module raises ImportError when the extension is not built.

Engine protocol (one engine thread calls step(); any thread may submit / cancel / stats):

    rid  = sched.submit(prompt_ids, arrival=time.monotonic(), priority=0)
    plan = sched.step(now)          # now: seconds, same clock as `arrival`
    1. perform plan.copies ([C, 2] int32 (src, dst) block pairs) as ONE gather-then-scatter
       (every source read before any destination is written), before the forward pass;
    2. run the model over plan.scheduled_req_ids: prefill chunks (plan.prefill_*) then
       decodes (plan.decode_*); sequence i computes positions [context_lens[i] - count,
       context_lens[i]) with block table plan.block_table(i) (CSR: block_table_offsets /
       block_table_ids); position p lives in table[p // block_size], row p % block_size;
    3. sample for every decode and every prefill chunk with prefill_is_last, then report
       sched.append_batch(req_ids, token_ids) (or append_tokens(rid, ids));
       on a stop token: append it, then finish(rid, FinishReason.EOS) (LENGTH at the limit);
    4. run plan.decoder items (most urgent first): feed generated audio ids
       [start, start + num_feed) of that request's stream (SETUP builds the prompt caches,
       CHUNK / FINAL emit audio), then sched.decoder_done(rid, audio_seconds, now);
    5. drop per-request state of every (rid, reason) in plan.ended (cancels from other
       threads arrive here); requests in plan.preempted_req_ids lost their KV and will be
       recomputed (prefill from their cached prefix) when re-admitted.
A plan must be fully executed before the next step(): its freed / newly handed-out blocks
are only reused by later plans.

Policy (see csrc/scheduler/scheduler_step.cpp for the same text next to the code):
- Lifecycle: WAITING -> RUNNING (chunked prefill under `max_num_batched_tokens`, then
  decode) -> DRAINING (LLM done, decoder still has ids) -> ENDED (EOS / LENGTH / ERROR /
  CANCELLED, reported once). At most `max_num_seqs` RUNNING requests.
- Each step: decodes first (1 token each), then running prefills, then admission of
  waiting requests by (priority, submission order) while seats, budget and free blocks
  allow (`admission_reserve_blocks` stay free); the head of the queue is never overtaken.
- Paged KV: `block_size`-token blocks with reference counts. Prefix sharing: full blocks are
  found by a chained content hash (block i's hash covers blocks 0..i) — a cached voice
  prompt is prefilled once and shared; a new prompt that diverges inside a block gets a
  copy of the block's common part (copy-on-write of the last partial block; `copies`). The
  request's last token is always computed; prefill starts at the plan's `prefill_starts`.
  Blocks are shareable only after the plan that computed them has run (next step or
  finish), freed blocks stay cached until evicted least-recently-freed first.
- Preemption: when a running request cannot get a block for even one token, the least
  important (highest priority value), most recently admitted running request loses its
  blocks and goes back to the queue (no admission in that step).
- Decoder: per request, over generated ids minus the newest `decoder_holdback_ids`
  (upstream drops the last generated id): SETUP once lookahead (5) ids exist; CHUNK of
  (c // 3) * 5 ids once that many + 5 are buffered, c = 15, 24, then 48 frames; FINAL with
  everything left once the LLM is done. One item in flight per stream, at most
  `max_decoder_batch` per step, earliest deadline first: arrival + ttfa_target_s before
  the first audio, then first-audio time + audio seconds emitted (playback runs dry then).
- Priority: an int, lower value = more important.
"""
from __future__ import annotations

from typing import Optional


from ..errors import InvalidInputError
from .scheduler_types import DecoderKind, FinishReason, RequestState, SchedulerConfig, mixed_ids_for_frames

try:
    from .. import _scheduler as _native
except ImportError as exc:  # no silent fallback: the runtime needs the C++ scheduler
    raise ImportError(
        "editx._scheduler (the C++ request scheduler) is not built. Build it with "
        "`pip install -e .` from the repository root (needs a C++17 compiler; cmake and pybind11 "
        "come from the build requirements), or `pip install -e . --no-build-isolation` after "
        "`pip install pybind11 cmake`."
    ) from exc

__all__ = [
    "RequestState", "FinishReason", "DecoderKind", "SchedulerConfig", "Scheduler", "PyScheduler",
    "PyStepPlan", "PyDecoderItem", "make_scheduler", "plan_to_dict", "mixed_ids_for_frames",
]


# ---- the C++ scheduler -------------------------------------------------------------------


class Scheduler(_native.Scheduler):
    """The C++ scheduler. Methods (all from `editx._scheduler.Scheduler`, GIL released in
    step / submit / append_batch):

    submit(prompt_ids, *, arrival, priority=0) -> int        queue a request, returns its id
    cancel(req_id) -> bool                                   any thread; False if it had ended
    finish(req_id, reason) -> bool                           FinishReason.EOS / LENGTH / ERROR
    append_tokens(req_id, ids) -> bool                       sampled ids of one request
    append_batch(req_ids, token_ids) -> int                  one id per request, all-or-nothing
    step(now) -> StepPlan                                    plan one engine step
    decoder_done(req_id, audio_seconds, now) -> bool         a decoder item ran
    stats() -> dict; state(req_id) -> int; progress(req_id) -> dict; block_table(req_id) -> list;
    check_invariants()
    Calls about a request that already ended return False (it may have been cancelled by
    another thread); unknown ids and protocol errors raise InvalidInputError.
    """

    def __init__(self, config: Optional[SchedulerConfig] = None) -> None:
        config = SchedulerConfig() if config is None else config
        if not isinstance(config, SchedulerConfig):
            raise InvalidInputError(f"config: expected a SchedulerConfig, got {type(config).__name__}")
        super().__init__(config.to_native())
        self._policy = config

    @property
    def config(self) -> SchedulerConfig:
        return self._policy


def make_scheduler(config: Optional[SchedulerConfig] = None, impl: str = "cpp"):
    """A scheduler of the chosen implementation: "cpp" (the runtime's) or "python" (reference)."""
    if impl == "cpp":
        return Scheduler(config)
    if impl == "python":
        return PyScheduler(config)
    raise InvalidInputError(f"impl: expected 'cpp' or 'python', got {impl!r}")


def plan_to_dict(plan) -> dict:
    """Either implementation's plan as plain Python values (for comparisons and logs)."""
    return {
        "step": int(plan.step),
        "num_scheduled_tokens": int(plan.num_scheduled_tokens),
        "prefill": list(zip(plan.prefill_req_ids.tolist(), plan.prefill_starts.tolist(),
                            plan.prefill_counts.tolist(), plan.prefill_is_last.tolist())),
        "decode": list(zip(plan.decode_req_ids.tolist(), plan.decode_positions.tolist())),
        "context_lens": plan.context_lens.tolist(),
        "block_tables": [plan.block_table(i).tolist() for i in range(len(plan.scheduled_req_ids))],
        "copies": [tuple(p) for p in plan.copies.tolist()],
        "preempted": plan.preempted_req_ids.tolist(),
        "decoder": [(d.req_id, int(d.kind), d.start, d.num_ids, d.num_feed, d.is_first, d.is_last, d.deadline)
                    for d in plan.decoder],
        "ended": [tuple(e) for e in plan.ended],
    }


# The pure-Python twin lives in its own module; imported last (it uses the types above).
from .py_scheduler import PyDecoderItem, PyScheduler, PyStepPlan  # noqa: E402
