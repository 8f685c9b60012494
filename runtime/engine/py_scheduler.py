"""Pure-Python twin of the C++ scheduler (`editx._scheduler`): the same policy and API, written
plainly. Used as the differential-test oracle and the benchmark baseline; the runtime never
falls back to it (see `editx.engine.scheduler`).
"""
from __future__ import annotations

import bisect
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import InvalidInputError
from .scheduler_types import DecoderKind, FinishReason, RequestState, SchedulerConfig, mixed_ids_for_frames

# ---- the pure-Python reference -----------------------------------------------------------

_ROOT_HASH = hash("editx-rt block hash root")


@dataclass(frozen=True, slots=True)
class PyDecoderItem:
    """Same fields as editx._scheduler.DecoderItem (kind: DecoderKind value)."""

    req_id: int
    kind: int
    start: int
    num_ids: int
    num_feed: int
    is_first: bool
    is_last: bool
    deadline: float


@dataclass(slots=True)
class PyStepPlan:
    """Same attributes as editx._scheduler.StepPlan (numpy arrays of the same dtypes)."""

    step: int
    now: float
    num_scheduled_tokens: int
    prefill_req_ids: np.ndarray
    prefill_starts: np.ndarray
    prefill_counts: np.ndarray
    prefill_is_last: np.ndarray
    decode_req_ids: np.ndarray
    decode_positions: np.ndarray
    scheduled_req_ids: np.ndarray
    context_lens: np.ndarray
    block_table_offsets: np.ndarray
    block_table_ids: np.ndarray
    copies: np.ndarray
    preempted_req_ids: np.ndarray
    decoder: list
    ended: list

    def block_table(self, i: int) -> np.ndarray:
        """Block table of the i-th scheduled sequence."""
        if not 0 <= i < len(self.scheduled_req_ids):
            raise InvalidInputError(f"i: expected 0 <= i < {len(self.scheduled_req_ids)}")
        return self.block_table_ids[self.block_table_offsets[i]:self.block_table_offsets[i + 1]]


class _PyBlockPool:
    """Python twin of csrc/scheduler/block_pool.h (same LRU order and index rules)."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.block_size = block_size
        self.ref = [0] * num_blocks
        self.valid = [0] * num_blocks
        self.hash = [0] * num_blocks
        self.parent = [0] * num_blocks
        self.full_indexed = [False] * num_blocks
        self.parent_indexed = [False] * num_blocks
        self.content: list[list[int]] = [[] for _ in range(num_blocks)]
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.by_hash: dict[int, int] = {}
        self.by_parent: dict[int, int] = {}

    def allocate(self) -> int:
        block, _ = self.free.popitem(last=False)
        self._evict(block)
        self.ref[block] = 1
        return block

    def retain(self, block: int) -> None:
        if self.ref[block] == 0:
            del self.free[block]
        self.ref[block] += 1

    def release(self, block: int) -> None:
        self.ref[block] -= 1
        if self.ref[block] == 0:
            self.free[block] = None

    def _evict(self, block: int) -> None:
        if self.full_indexed[block]:
            del self.by_hash[self.hash[block]]
        if self.parent_indexed[block]:
            del self.by_parent[self.parent[block]]
        self.valid[block], self.hash[block], self.parent[block] = 0, 0, 0
        self.full_indexed[block] = self.parent_indexed[block] = False
        self.content[block] = []

    def find_full(self, h: int, tokens: list[int]) -> int:
        block = self.by_hash.get(h, -1)
        return block if block >= 0 and self.content[block] == tokens else -1

    def record(self, block: int, parent: int, tokens: list[int]) -> None:
        self.content[block] = list(tokens)
        self.parent[block] = parent
        self.valid[block] = len(tokens)

    def index_full(self, block: int, h: int) -> None:
        if self.full_indexed[block] or h in self.by_hash:
            return
        self.by_hash[h] = block
        self.hash[block] = h
        self.full_indexed[block] = True

    def index_by_parent(self, block: int) -> None:
        old = self.by_parent.get(self.parent[block], -1)
        if old >= 0 and old != block:
            self.parent_indexed[old] = False
        self.by_parent[self.parent[block]] = block
        self.parent_indexed[block] = True

    def check(self, expected_refs: list[int]) -> None:
        for block, (ref, want) in enumerate(zip(self.ref, expected_refs)):
            assert ref == want, f"block {block}: ref count {ref} but {want} block tables hold it"
            assert (block in self.free) == (ref == 0), f"block {block}: on the free list iff unreferenced"
            assert not self.full_indexed[block] or self.by_hash.get(self.hash[block]) == block, "hash index disagrees"
            assert not self.parent_indexed[block] or self.by_parent.get(self.parent[block]) == block, \
                "parent index disagrees"
        for h, block in self.by_hash.items():
            assert self.full_indexed[block] and self.hash[block] == h, "stale hash entry"
        for p, block in self.by_parent.items():
            assert self.parent_indexed[block] and self.parent[block] == p and self.valid[block] > 0, \
                "stale parent entry"


@dataclass(eq=False, slots=True)
class _PyStream:
    consumed: int = 0
    chunks: int = 0
    audio_items: int = 0
    setup_done: bool = False
    in_flight: bool = False
    in_flight_kind: int = DecoderKind.SETUP
    finished: bool = False
    has_audio: bool = False
    first_audio_time: float = 0.0
    audio_seconds: float = 0.0


@dataclass(eq=False, slots=True)
class _PyRequest:
    id: int
    priority: int
    arrival: float
    tokens: list[int]
    num_prompt: int
    admit_seq: int = 0
    block_hashes: list[int] = field(default_factory=list)
    table: list[int] = field(default_factory=list)
    num_computed: int = 0
    num_committed: int = 0
    state: int = RequestState.WAITING
    llm_done: bool = False
    reason: int = FinishReason.EOS
    entry: int = -1
    stream: _PyStream = field(default_factory=_PyStream)

    @property
    def key(self) -> tuple[int, int]:
        return (self.priority, self.id)

    @property
    def run_key(self) -> tuple[int, int]:
        return (self.priority, self.admit_seq)


@dataclass(eq=False, slots=True)
class _Entry:
    request: _PyRequest
    start: int
    count: int
    prefill: bool
    active: bool = True


@dataclass(eq=False, slots=True)
class _StepState:
    budget: int
    entries: list = field(default_factory=list)
    copies: list = field(default_factory=list)
    preempted: list = field(default_factory=list)


_COUNTERS = ("steps", "submitted", "ended", "preemptions", "prefix_hit_tokens", "copied_blocks",
             "ttfa_misses", "underruns")


class PyScheduler:
    """Pure-Python scheduler with the same policy and API as `Scheduler` (see the module doc).

    Straightforward on purpose: it is the benchmark baseline and the differential-test
    oracle for the C++ scheduler, and is not used by the runtime.
    """

    def __init__(self, config: Optional[SchedulerConfig] = None) -> None:
        config = SchedulerConfig() if config is None else config
        if not isinstance(config, SchedulerConfig):
            raise InvalidInputError(f"config: expected a SchedulerConfig, got {type(config).__name__}")
        self._policy = config
        self._chunk_ids = [mixed_ids_for_frames(f) for f in config.decoder_chunk_frames]
        self._lookahead = mixed_ids_for_frames(config.decoder_lookahead_frames)
        self._lock = threading.Lock()
        self._pool = _PyBlockPool(config.num_blocks, config.block_size)
        self._requests: dict[int, _PyRequest] = {}  # alive, in id order
        self._waiting: list[tuple[int, int]] = []   # sorted (priority, id)
        self._running: list[_PyRequest] = []        # sorted (priority, admit_seq)
        self._last_scheduled: list[int] = []
        self._ended: list[tuple[int, int]] = []
        self._next_id = 0
        self._next_admit_seq = 0
        self._counters = dict.fromkeys(_COUNTERS, 0)

    @property
    def config(self) -> SchedulerConfig:
        return self._policy

    # ---- lookups -------------------------------------------------------------------------

    def _find(self, req_id: int) -> Optional[_PyRequest]:
        if isinstance(req_id, bool) or not isinstance(req_id, (int, np.integer)) or not 0 <= req_id < self._next_id:
            raise InvalidInputError(f"req_id: unknown request id {req_id}")
        return self._requests.get(int(req_id))

    # ---- submission and appends ----------------------------------------------------------

    def submit(self, prompt_ids: Sequence[int], *, arrival: float, priority: int = 0) -> int:
        ids = _token_list(prompt_ids, "prompt_ids")
        c = self._policy
        if len(ids) > c.max_model_len:
            raise InvalidInputError(f"prompt_ids: {len(ids)} tokens exceed max_model_len {c.max_model_len}")
        if not math.isfinite(arrival):
            raise InvalidInputError("arrival: expected a finite time in seconds")
        if isinstance(priority, bool) or not isinstance(priority, (int, np.integer)) \
                or not -2**31 <= priority < 2**31:
            raise InvalidInputError("priority: expected a 32-bit int")
        r = _PyRequest(id=-1, priority=int(priority), arrival=float(arrival), tokens=ids, num_prompt=len(ids))
        self._extend_hashes(r)
        with self._lock:
            r.id = self._next_id
            self._next_id += 1
            self._requests[r.id] = r
            bisect.insort(self._waiting, r.key)
            self._counters["submitted"] += 1
            return r.id

    def _extend_hashes(self, r: _PyRequest) -> None:
        if not self._policy.enable_prefix_caching:
            return
        b = self._policy.block_size
        for k in range(len(r.block_hashes), len(r.tokens) // b):
            parent = r.block_hashes[k - 1] if k else _ROOT_HASH
            r.block_hashes.append(hash((parent, *r.tokens[k * b:(k + 1) * b])))

    def _check_appendable(self, r: _PyRequest, n: int, arg: str) -> None:
        if r.state != RequestState.RUNNING or r.llm_done:
            raise InvalidInputError(f"{arg}: request {r.id} is not running, so it has no token to append")
        if r.num_computed != len(r.tokens):
            raise InvalidInputError(f"{arg}: request {r.id} still has uncomputed tokens; append only after a plan "
                                    "item that reaches its last token")
        if len(r.tokens) + n > self._policy.max_model_len:
            raise InvalidInputError(f"ids: request {r.id} would exceed max_model_len {self._policy.max_model_len}")

    def append_tokens(self, req_id: int, ids: Sequence[int]) -> bool:
        ids = _token_list(ids, "ids")
        with self._lock:
            r = self._find(req_id)
            if r is None:
                return False
            self._check_appendable(r, len(ids), "req_id")
            r.tokens.extend(ids)
            self._extend_hashes(r)
            return True

    def append_batch(self, req_ids: Sequence[int], token_ids: Sequence[int]) -> int:
        rids = _token_list(req_ids, "req_ids")
        toks = _token_list(token_ids, "token_ids")
        if len(rids) != len(toks):
            raise InvalidInputError("token_ids: expected one token id per request id")
        with self._lock:
            seen, alive = set(), []
            for rid, tok in zip(rids, toks):  # validate everything first: a rejected batch changes nothing
                r = self._find(rid)
                if r is None:
                    continue
                if rid in seen:
                    raise InvalidInputError(f"req_ids: request {rid} appears twice")
                seen.add(rid)
                self._check_appendable(r, 1, "req_ids")
                alive.append((r, tok))
            for r, tok in alive:
                r.tokens.append(tok)
                self._extend_hashes(r)
            return len(alive)

    # ---- ending ----------------------------------------------------------------------------

    def _release_blocks(self, r: _PyRequest) -> None:
        for block in reversed(r.table):  # tail first: leading (shareable) blocks stay cached longest
            self._pool.release(block)
        r.table = []
        r.num_computed = r.num_committed = 0

    def _end(self, r: _PyRequest, reason: int) -> None:
        if r.state == RequestState.RUNNING:
            self._release_blocks(r)
            self._running.remove(r)
        elif r.state == RequestState.WAITING:
            self._waiting.remove(r.key)
        r.state = RequestState.ENDED
        del self._requests[r.id]
        self._ended.append((r.id, int(reason)))
        self._counters["ended"] += 1

    def _decodable(self, r: _PyRequest) -> int:
        return max(0, len(r.tokens) - r.num_prompt - self._policy.decoder_holdback_ids)

    def _end_if_drained(self, r: _PyRequest) -> None:
        s = r.stream
        if not r.llm_done or s.in_flight:
            return
        if s.finished or (not s.setup_done and self._decodable(r) < self._lookahead):
            self._end(r, r.reason)

    def cancel(self, req_id: int) -> bool:
        with self._lock:
            r = self._find(req_id)
            if r is None:
                return False
            self._end(r, FinishReason.CANCELLED)
            return True

    def finish(self, req_id: int, reason: int) -> bool:
        if reason not in (FinishReason.EOS, FinishReason.LENGTH, FinishReason.ERROR):
            raise InvalidInputError("reason: expected EOS, LENGTH or ERROR (use cancel() to cancel)")
        with self._lock:
            r = self._find(req_id)
            if r is None:
                return False
            if reason == FinishReason.ERROR:
                self._end(r, reason)
                return True
            if r.llm_done:
                raise InvalidInputError(f"req_id: request {req_id} already finished generating")
            if r.state == RequestState.RUNNING:
                self._commit(r)  # the engine ran the last plan before sampling the stop token
                self._release_blocks(r)
                self._running.remove(r)
            else:
                self._waiting.remove(r.key)
            r.llm_done, r.reason, r.state = True, int(reason), RequestState.DRAINING
            self._end_if_drained(r)
            return True

    def decoder_done(self, req_id: int, audio_seconds: float, now: float) -> bool:
        if not math.isfinite(audio_seconds) or audio_seconds < 0:
            raise InvalidInputError("audio_seconds: expected a finite number >= 0")
        if not math.isfinite(now):
            raise InvalidInputError("now: expected a finite time in seconds")
        with self._lock:
            r = self._find(req_id)
            if r is None:
                return False
            s = r.stream
            if not s.in_flight:
                raise InvalidInputError(f"req_id: request {req_id} has no decoder item in flight")
            s.in_flight = False
            if audio_seconds > 0:
                due = self._deadline(r)
                if not s.has_audio:
                    s.has_audio, s.first_audio_time = True, float(now)
                    self._counters["ttfa_misses"] += now > due
                else:
                    self._counters["underruns"] += now > due
                s.audio_seconds += float(audio_seconds)
            if s.in_flight_kind == DecoderKind.FINAL:
                s.finished = True
            self._end_if_drained(r)
            return True

    # ---- step ------------------------------------------------------------------------------

    def step(self, now: float) -> PyStepPlan:
        if not math.isfinite(now):
            raise InvalidInputError("now: expected a finite time in seconds")
        with self._lock:
            self._commit_last_step()
            st = _StepState(budget=self._policy.max_num_batched_tokens)
            self._schedule_decodes(st)
            self._schedule_running_prefills(st)
            if not st.preempted:
                self._admit_waiting(st)
            plan = self._build_plan(st, now)
            self._counters["steps"] += 1
            return plan

    def _commit_last_step(self) -> None:
        for rid in self._last_scheduled:
            r = self._requests.get(rid)
            if r is not None and r.state == RequestState.RUNNING:
                self._commit(r)
        self._last_scheduled = []

    def _commit(self, r: _PyRequest) -> None:
        start, end = r.num_committed, r.num_computed
        r.num_committed = end
        if not self._policy.enable_prefix_caching or end <= start:
            return
        b, pool = self._policy.block_size, self._pool
        for i in range(start // b, end // b):
            pool.record(r.table[i], r.block_hashes[i - 1] if i else _ROOT_HASH, r.tokens[i * b:(i + 1) * b])
            pool.index_full(r.table[i], r.block_hashes[i])
            if i * b < r.num_prompt:
                pool.index_by_parent(r.table[i])
        tail = end // b
        if start < r.num_prompt and end % b and tail * b < r.num_prompt:
            pool.record(r.table[tail], r.block_hashes[tail - 1] if tail else _ROOT_HASH, r.tokens[tail * b:end])
            pool.index_by_parent(r.table[tail])

    def _schedule_decodes(self, st: _StepState) -> None:
        i = 0
        while i < len(self._running) and st.budget > 0:
            r = self._running[i]
            if len(r.tokens) - r.num_computed == 1 and r.num_computed >= r.num_prompt:
                if self._reserve_blocks(st, r, 1) == 1:
                    self._add_entry(st, r, r.num_computed, 1, False)
            i += 1

    def _schedule_running_prefills(self, st: _StepState) -> None:
        i = 0
        while i < len(self._running) and st.budget > 0:
            r = self._running[i]
            remaining = len(r.tokens) - r.num_computed
            if r.entry < 0 and remaining > 0:
                n = self._reserve_blocks(st, r, self._chunk_limit(remaining, st.budget))
                if n > 0:
                    self._add_entry(st, r, r.num_computed, n, True)
            i += 1

    def _chunk_limit(self, remaining: int, budget: int) -> int:
        cap = self._policy.max_prefill_chunk
        return min(remaining, budget, cap) if cap > 0 else min(remaining, budget)

    def _blocks_needed(self, r: _PyRequest, n: int) -> int:
        return max(0, -(-(r.num_computed + n) // self._policy.block_size) - len(r.table))

    def _reserve_blocks(self, st: _StepState, r: _PyRequest, n: int) -> int:
        while self._blocks_needed(r, 1) > len(self._pool.free):
            victim = self._running[-1]
            self._preempt(st, victim)
            if victim is r:
                return 0
        room = (len(r.table) + len(self._pool.free)) * self._policy.block_size - r.num_computed
        n = min(n, room)
        for _ in range(self._blocks_needed(r, n)):
            r.table.append(self._pool.allocate())
        return n

    def _preempt(self, st: _StepState, victim: _PyRequest) -> None:
        if victim.entry >= 0:
            e = st.entries[victim.entry]
            e.active = False
            st.budget += e.count
            victim.entry = -1
        self._release_blocks(victim)
        self._running.remove(victim)
        victim.state = RequestState.WAITING
        bisect.insort(self._waiting, victim.key)
        st.preempted.append(victim.id)
        self._counters["preemptions"] += 1

    def _admit_waiting(self, st: _StepState) -> None:
        b, c = self._policy.block_size, self._policy
        while self._waiting and len(self._running) < c.max_num_seqs and st.budget > 0:
            r = self._requests[self._waiting[0][1]]
            hits, src, partial = self._match_prefix(r)
            start = len(hits) * b + partial
            revived = sum(self._pool.ref[h] == 0 for h in hits)
            spare = len(self._pool.free) - revived - c.admission_reserve_blocks
            n = min(self._chunk_limit(len(r.tokens) - start, st.budget), (len(hits) + spare) * b - start)
            if n < 1:
                break  # the head of the queue waits for blocks; nothing overtakes it
            self._admit(st, r, hits, src, partial, n)

    def _match_prefix(self, r: _PyRequest) -> tuple[list[int], int, int]:
        if not self._policy.enable_prefix_caching:
            return [], -1, 0
        b, pool = self._policy.block_size, self._pool
        limit = len(r.tokens) - 1  # the last token is always computed (its logits are needed)
        hits = []
        for i in range(min(len(r.block_hashes), limit // b)):
            block = pool.find_full(r.block_hashes[i], r.tokens[i * b:(i + 1) * b])
            if block < 0:
                break
            hits.append(block)
        k = len(hits)
        span = min(b, limit - k * b)
        if span <= 0:
            return hits, -1, 0
        src = pool.by_parent.get(r.block_hashes[k - 1] if k else _ROOT_HASH, -1)
        if src < 0:
            return hits, -1, 0
        held, want = pool.content[src], r.tokens[k * b:k * b + min(span, pool.valid[src])]
        n = 0
        while n < len(want) and held[n] == want[n]:
            n += 1
        return (hits, src, n) if n > 0 else (hits, -1, 0)

    def _admit(self, st: _StepState, r: _PyRequest, hits: list[int], src: int, partial: int, n: int) -> None:
        b = self._policy.block_size
        self._waiting.remove(r.key)
        for block in hits:
            self._pool.retain(block)
        r.table = list(hits)
        r.num_computed = r.num_committed = len(hits) * b
        if partial > 0:  # copy-on-write of the last partial block (see the C++ admit())
            dst = self._pool.allocate()
            r.table.append(dst)
            if dst != src:
                st.copies.append((src, dst))
                self._counters["copied_blocks"] += 1
            r.num_computed += partial
        self._counters["prefix_hit_tokens"] += r.num_computed
        for _ in range(self._blocks_needed(r, n)):
            r.table.append(self._pool.allocate())
        r.state = RequestState.RUNNING
        r.admit_seq = self._next_admit_seq
        self._next_admit_seq += 1
        keys = [x.run_key for x in self._running]
        self._running.insert(bisect.bisect_right(keys, (r.priority, r.admit_seq)), r)
        self._add_entry(st, r, r.num_computed, n, True)

    def _add_entry(self, st: _StepState, r: _PyRequest, start: int, count: int, prefill: bool) -> None:
        r.entry = len(st.entries)
        st.entries.append(_Entry(r, start, count, prefill))
        st.budget -= count

    def _build_plan(self, st: _StepState, now: float) -> PyStepPlan:
        active = [e for e in st.entries if e.active]
        order = [e for e in active if e.prefill] + [e for e in active if not e.prefill]
        prefills = [e for e in order if e.prefill]
        decodes = [e for e in order if not e.prefill]
        offsets, table_ids = [0], []
        for e in order:
            table_ids.extend(e.request.table)
            offsets.append(len(table_ids))
        for e in st.entries:
            e.request.entry = -1
        for e in active:
            e.request.num_computed = e.start + e.count
            self._last_scheduled.append(e.request.id)
        i64, i32 = np.int64, np.int32
        plan = PyStepPlan(
            step=self._counters["steps"], now=float(now), num_scheduled_tokens=sum(e.count for e in active),
            prefill_req_ids=np.array([e.request.id for e in prefills], i64),
            prefill_starts=np.array([e.start for e in prefills], i32),
            prefill_counts=np.array([e.count for e in prefills], i32),
            prefill_is_last=np.array([e.start + e.count == len(e.request.tokens) for e in prefills], bool),
            decode_req_ids=np.array([e.request.id for e in decodes], i64),
            decode_positions=np.array([e.start for e in decodes], i32),
            scheduled_req_ids=np.array([e.request.id for e in order], i64),
            context_lens=np.array([e.start + e.count for e in order], i32),
            block_table_offsets=np.array(offsets, i32), block_table_ids=np.array(table_ids, i32),
            copies=np.array(st.copies, i32).reshape(-1, 2), preempted_req_ids=np.array(st.preempted, i64),
            decoder=self._plan_decoder(), ended=[],
        )
        plan.ended, self._ended = self._ended, []
        return plan

    # ---- decoder plan ------------------------------------------------------------------

    def _deadline(self, r: _PyRequest) -> float:
        s = r.stream
        return s.first_audio_time + s.audio_seconds if s.has_audio else r.arrival + self._policy.ttfa_target_s

    def _next_action(self, r: _PyRequest) -> Optional[tuple[int, int, int, int]]:
        """(kind, start, num_ids, num_feed) of the stream's next item, if one is ready."""
        s, look = r.stream, self._lookahead
        if s.in_flight or s.finished:
            return None
        available = self._decodable(r)
        if not s.setup_done:
            return (DecoderKind.SETUP, 0, 0, look) if available >= look else None
        buffered = available - s.consumed
        chunk = self._chunk_ids[min(s.chunks, len(self._chunk_ids) - 1)]
        if r.llm_done and buffered <= chunk + look:
            return (DecoderKind.FINAL, s.consumed, buffered, buffered)
        if buffered >= chunk + look:
            return (DecoderKind.CHUNK, s.consumed, chunk, chunk + look)
        return None

    def _plan_decoder(self) -> list[PyDecoderItem]:
        ready = []
        for r in self._requests.values():
            action = self._next_action(r)
            if action is not None:
                ready.append((self._deadline(r), r.id, r, action))
        ready.sort(key=lambda c: (c[0], c[1]))
        return [self._start_item(r, action, deadline)
                for deadline, _, r, action in ready[:self._policy.max_decoder_batch]]

    def _start_item(self, r: _PyRequest, action: tuple[int, int, int, int], deadline: float) -> PyDecoderItem:
        kind, start, num_ids, num_feed = action
        s = r.stream
        item = PyDecoderItem(r.id, int(kind), start, num_ids, num_feed,
                             is_first=kind != DecoderKind.SETUP and s.audio_items == 0,
                             is_last=kind == DecoderKind.FINAL, deadline=deadline)
        if kind == DecoderKind.SETUP:
            s.setup_done = True
        else:
            s.audio_items += 1
            s.consumed += num_ids
            s.chunks += kind == DecoderKind.CHUNK
        s.in_flight, s.in_flight_kind = True, kind
        return item

    # ---- queries -------------------------------------------------------------------------

    def stats(self) -> dict:
        with self._lock:
            waiting, running = len(self._waiting), len(self._running)
            free = len(self._pool.free)
            return {"num_blocks": self._policy.num_blocks, "free_blocks": free,
                    "used_blocks": self._policy.num_blocks - free, "cached_blocks": len(self._pool.by_hash),
                    "waiting": waiting, "running": running, "draining": len(self._requests) - waiting - running,
                    **self._counters}

    def state(self, req_id: int) -> int:
        with self._lock:
            r = self._find(req_id)
            return RequestState.ENDED if r is None else r.state

    def progress(self, req_id: int) -> dict:
        """Where a request stands: state, token counts, LLM-generated vs decoder-consumed ids."""
        with self._lock:
            r = self._find(req_id)
            keys = ("priority", "num_prompt_tokens", "num_tokens", "num_computed_tokens", "generated",
                    "decoder_consumed", "decoder_in_flight", "audio_seconds")
            if r is None:
                return {"state": int(RequestState.ENDED), **dict.fromkeys(keys, 0),
                        "decoder_in_flight": False, "audio_seconds": 0.0}
            return {"state": int(r.state), "priority": r.priority, "num_prompt_tokens": r.num_prompt,
                    "num_tokens": len(r.tokens), "num_computed_tokens": r.num_computed,
                    "generated": len(r.tokens) - r.num_prompt, "decoder_consumed": r.stream.consumed,
                    "decoder_in_flight": r.stream.in_flight, "audio_seconds": r.stream.audio_seconds}

    def block_table(self, req_id: int) -> list[int]:
        with self._lock:
            r = self._find(req_id)
            return [] if r is None else list(r.table)

    def check_invariants(self) -> None:
        """Raise AssertionError if reference counts, free list, indexes or queues disagree."""
        with self._lock:
            refs = [0] * self._policy.num_blocks
            for r in self._running:
                for block in r.table:
                    refs[block] += 1
            self._pool.check(refs)
            assert len(self._running) <= self._policy.max_num_seqs, "more running requests than max_num_seqs"
            keys = [r.run_key for r in self._running]
            assert keys == sorted(keys), "running requests out of (priority, admission) order"
            assert self._waiting == sorted(self._waiting), "waiting queue out of order"
            b = self._policy.block_size
            for r in self._requests.values():
                assert len(r.table) == -(-r.num_computed // b), f"request {r.id}: block table / computed mismatch"
                assert r.num_committed <= r.num_computed <= len(r.tokens), f"request {r.id}: progress out of range"
                assert r.entry == -1, f"request {r.id}: schedule entry left over"
                in_queue = r.key in self._waiting
                assert in_queue == (r.state == RequestState.WAITING), f"request {r.id}: queue membership"
                assert r.state != RequestState.DRAINING or (r.llm_done and not r.table), f"request {r.id}: draining"
                assert r.stream.consumed <= self._decodable(r), f"request {r.id}: decoder consumed too much"
            running = sum(r.state == RequestState.RUNNING for r in self._requests.values())
            assert running == len(self._running), "running count disagrees"


def _token_list(values: Any, arg: str) -> list[int]:
    """A non-empty 1-D sequence of non-negative ints as a list (what the C++ binding accepts)."""
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.size == 0 or arr.dtype.kind not in "biu" \
            or (arr.dtype.kind == "u" and int(arr.max()) > np.iinfo(np.int64).max):
        raise InvalidInputError(f"{arg}: expected a non-empty 1-D sequence of ints")
    if arr.dtype.kind != "b" and arr.min() < 0:
        raise InvalidInputError(f"{arg}: token ids must be >= 0, got {int(arr.min())}")
    return arr.astype(np.int64).tolist()
