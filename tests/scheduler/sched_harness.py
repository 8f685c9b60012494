"""Fake engine for scheduler tests: executes plans the way the real engine must, against a
simulated paged KV store, and checks every plan and the scheduler's invariants.

The KV store holds, per block row, a fingerprint of the token prefix that produced it
(fp[p] = hash(fp[p-1], token[p])). Running a sequence writes fingerprints for its new
positions and then "attends" by checking that every position < context_len holds exactly
its own prefix's fingerprint, so a block shared or reused wrongly, a missed copy-on-write,
or a prefill starting after positions that are not really cached is caught at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from editx.engine.scheduler import DecoderKind, FinishReason, RequestState, SchedulerConfig, mixed_ids_for_frames

SECONDS_PER_ID = 0.024  # 5 mixed ids = 3 token frames = 0.12 s of audio


@dataclass
class Stream:
    """What the engine itself knows about one request."""

    tokens: list[int]
    num_prompt: int
    fingerprints: list[int] = field(default_factory=list)
    fed: int = 0            # audio ids the decoder window has advanced past
    setup: bool = False
    llm_done: bool = False
    items: list = field(default_factory=list)  # (kind, start, num_ids, num_feed) of every decoder item

    def fingerprint(self, p: int) -> int:
        while len(self.fingerprints) <= p:
            prev = self.fingerprints[-1] if self.fingerprints else 0
            self.fingerprints.append(hash((prev, self.tokens[len(self.fingerprints)])))
        return self.fingerprints[p]

    @property
    def generated(self) -> int:
        return len(self.tokens) - self.num_prompt


class FakeEngine:
    """Runs plans of any scheduler implementation and checks them.

    next_token(rid, n_generated) -> token id; stop(rid, n_generated) -> True to finish with
    EOS after appending that token. Decoder items complete immediately unless
    `hold_decoder` is set; then they wait in `pending` until `complete_decoder()`.
    """

    def __init__(self, sched, next_token: Optional[Callable[[int, int], int]] = None,
                 stop: Optional[Callable[[int, int], bool]] = None, hold_decoder: bool = False) -> None:
        self.sched = sched
        self.cfg: SchedulerConfig = sched.config
        self.kv: list[list[Optional[int]]] = [[None] * self.cfg.block_size for _ in range(self.cfg.num_blocks)]
        self.streams: dict[int, Stream] = {}
        self.next_token = next_token or (lambda rid, n: 70000 + (rid * 7 + n) % 50)
        self.stop = stop or (lambda rid, n: False)
        self.hold_decoder = hold_decoder
        self.pending: list = []
        self.ended: dict[int, int] = {}
        self.cancelled_by_us: set[int] = set()
        self.failed_by_us: set[int] = set()
        self.now = 0.0
        self.plans: list = []

    # ---- driving -------------------------------------------------------------------------

    def submit(self, prompt: list[int], priority: int = 0) -> int:
        rid = self.sched.submit(prompt, arrival=self.now, priority=priority)
        self.streams[rid] = Stream(list(prompt), len(prompt))
        return rid

    def cancel(self, rid: int) -> bool:
        already = rid in self.ended or rid in self.cancelled_by_us or rid in self.failed_by_us
        ok = self.sched.cancel(rid)
        assert not (already and ok), f"request {rid} cancelled after it had ended"
        assert self.sched.state(rid) == RequestState.ENDED
        if ok:
            self.cancelled_by_us.add(rid)
        return ok

    def fail(self, rid: int) -> bool:
        already = rid in self.ended or rid in self.cancelled_by_us or rid in self.failed_by_us
        ok = self.sched.finish(rid, FinishReason.ERROR)
        assert not (already and ok), f"request {rid} failed after it had ended"
        if ok:
            self.failed_by_us.add(rid)
        return ok

    def step(self, dt: float = 0.02):
        self.now += dt
        plan = self.sched.step(self.now)
        self.plans.append(plan)
        self.check_plan(plan)
        self.apply_copies(plan)
        self.run_sequences(plan)
        self.sample(plan)
        self.run_decoder(plan)
        self.sched.check_invariants()
        return plan

    def run_until_idle(self, max_steps: int = 10_000) -> None:
        """Steps (completing decoder work) until every submitted request has ended."""
        for _ in range(max_steps):
            if len(self.ended) == len(self.streams) and not self.pending:
                break
            self.step()
            if self.hold_decoder:
                self.complete_decoder()
        assert len(self.ended) == len(self.streams), "some requests never ended"
        assert self.sched.stats()["free_blocks"] == self.cfg.num_blocks, "blocks leaked"

    # ---- plan execution --------------------------------------------------------------------

    def check_plan(self, plan) -> None:
        cfg = self.cfg
        counts = list(plan.prefill_counts) + [1] * len(plan.decode_req_ids)
        assert plan.num_scheduled_tokens == sum(counts) <= cfg.max_num_batched_tokens
        assert len(plan.scheduled_req_ids) <= cfg.max_num_seqs
        assert len(set(plan.scheduled_req_ids.tolist())) == len(plan.scheduled_req_ids)
        assert len(plan.decoder) <= cfg.max_decoder_batch
        deadlines = [d.deadline for d in plan.decoder]
        assert deadlines == sorted(deadlines)
        assert len({d.req_id for d in plan.decoder}) == len(plan.decoder)
        written: dict[int, int] = {}
        for i, rid in enumerate(plan.scheduled_req_ids.tolist()):
            table = plan.block_table(i).tolist()
            end = int(plan.context_lens[i])
            count = counts[i]
            assert all(0 <= b < cfg.num_blocks for b in table)
            assert len(table) == -(-end // cfg.block_size), "table covers exactly the context"
            for p in range(end - count, end):  # a block written this step belongs to one sequence
                b = table[p // cfg.block_size]
                assert written.setdefault(b, rid) == rid, f"block {b} written by two sequences"
        stats = self.sched.stats()
        assert stats["free_blocks"] + stats["used_blocks"] == cfg.num_blocks

    def apply_copies(self, plan) -> None:
        pairs = [tuple(p) for p in plan.copies.tolist()]
        assert all(src != dst for src, dst in pairs)
        rows = [list(self.kv[src]) for src, _ in pairs]  # gather first, then scatter
        for (_, dst), row in zip(pairs, rows):
            self.kv[dst] = row

    def run_sequences(self, plan) -> None:
        b = self.cfg.block_size
        counts = list(plan.prefill_counts) + [1] * len(plan.decode_req_ids)
        for i, rid in enumerate(plan.scheduled_req_ids.tolist()):
            s, table, end = self.streams[rid], plan.block_table(i).tolist(), int(plan.context_lens[i])
            assert end <= len(s.tokens), "scheduled a token the engine never produced"
            for p in range(end - counts[i], end):
                self.kv[table[p // b]][p % b] = s.fingerprint(p)
        for i, rid in enumerate(plan.scheduled_req_ids.tolist()):
            s, table, end = self.streams[rid], plan.block_table(i).tolist(), int(plan.context_lens[i])
            for p in range(end):
                got = self.kv[table[p // b]][p % b]
                assert got == s.fingerprint(p), f"request {rid} reads wrong KV at position {p}"

    def sample(self, plan) -> None:
        rids = [int(r) for r, last in zip(plan.prefill_req_ids, plan.prefill_is_last) if last]
        rids += plan.decode_req_ids.tolist()
        batch_ids, batch_tokens, stops = [], [], []
        for rid in rids:
            s = self.streams[rid]
            if len(s.tokens) == self.cfg.max_model_len:  # a prompt of max_model_len tokens
                stops.append((rid, FinishReason.LENGTH))
                continue
            s.tokens.append(self.next_token(rid, s.generated))
            batch_ids.append(rid)
            batch_tokens.append(s.tokens[-1])
            if self.stop(rid, s.generated):
                stops.append((rid, FinishReason.EOS))   # the stop token is appended, then finish
            elif len(s.tokens) == self.cfg.max_model_len:
                stops.append((rid, FinishReason.LENGTH))
        if batch_ids:
            assert self.sched.append_batch(batch_ids, batch_tokens) == len(batch_ids)
        for rid, reason in stops:
            assert self.sched.finish(rid, reason)
            self.streams[rid].llm_done = True

    def run_decoder(self, plan) -> None:
        lookahead = mixed_ids_for_frames(self.cfg.decoder_lookahead_frames)
        for d in plan.decoder:
            s = self.streams[d.req_id]
            decodable = s.generated - self.cfg.decoder_holdback_ids
            assert d.start == s.fed and d.start + d.num_feed <= decodable
            assert (d.kind == DecoderKind.SETUP) == (not s.setup)
            if d.kind == DecoderKind.SETUP:
                assert d.num_ids == 0 and d.num_feed == lookahead
            s.setup = True
            s.fed += d.num_ids
            s.items.append((int(d.kind), d.start, d.num_ids, d.num_feed))
            self.pending.append(d)
        for rid, reason in plan.ended:
            assert rid not in self.ended, f"request {rid} ended twice"
            self.ended[rid] = int(reason)
            assert (reason == FinishReason.CANCELLED) == (rid in self.cancelled_by_us)
            assert (reason == FinishReason.ERROR) == (rid in self.failed_by_us)
        if not self.hold_decoder:
            self.complete_decoder()

    def complete_decoder(self, order: Optional[list[int]] = None) -> None:
        items = self.pending if order is None else [self.pending[i] for i in order]
        done = set(map(id, items))
        self.pending = [d for d in self.pending if id(d) not in done]
        for d in items:
            seconds = 0.0 if d.kind == DecoderKind.SETUP else d.num_ids * SECONDS_PER_ID
            self.sched.decoder_done(d.req_id, seconds, self.now)
