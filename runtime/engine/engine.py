"""The streaming engine: continuous batching of the LLM over a paged KV pool, interleaved with
per-stream token2wav chunks, all planned by the C++ scheduler.

One engine step (`Engine.step`):
  1. `plan = scheduler.step(now)`: which prefill chunks and decodes run, their block tables,
     copy-on-write copies, preemptions, the decoder items (most urgent first), ended requests;
  2. one packed forward over the paged pool (`Step1Model.forward_paged`) for every scheduled
     sequence, then next-token selection per request (its own processors and generator);
  3. each decoder item feeds its request's generated ids to the request's `Token2WavStream`
     and puts the finished `AudioChunk`s on the request's output queue — in the step itself, or
     (`overlap_decoder`) on the `DecoderWorker` thread while the next LLM steps run.
So the first chunk of a stream leaves as soon as its tokens exist while other streams keep
decoding. A background thread runs steps while requests are active; callers submit and
cancel from any thread. Requests keep all their state in `Request` objects; the models are
shared read-only.
"""
from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from typing import Optional

import numpy as np
import torch

from ..errors import EditXError
from ..types import AudioChunk, StreamUsage
from ..layers.attention import alibi_uses_triton
from ..models.interleave import llm_ids_to_mixed
from .decoder_worker import DecoderTask, DecoderWorker, run_tasks
from .model_runner import PagedDecodeGraphs
from .paged_kv import PagedBatch, PagedKVCache, SequenceChunk
from .request import CANCELLED, FAILED, FINISHED, Request, select_next_ids
from .sampling import SampledVocab
from .scheduler import FinishReason, SchedulerConfig, make_scheduler

log = logging.getLogger("editx")
_LIVE_ENGINES: "weakref.WeakSet[Engine]" = weakref.WeakSet()


@atexit.register
def _stop_engines_at_exit() -> None:
    # An engine thread still inside the C++ scheduler (GIL released) while the interpreter
    # finalises would abort the process; stop every live engine first.
    for engine in list(_LIVE_ENGINES):
        engine.shutdown()
OUTPUT_RATE = 24000
# Decode steps with fewer rows fill the graph buffers row by row, larger ones from the plan's arrays:
# benchmarks/e2e/bench_decode_fill.py (CPU, the host's real cost) 44 vs 100 us at 1 row, 496 vs 143 us
# at 64, 1,869 vs 304 us at 256; the crossover lies between 4 and 16 rows.
ARRAY_FILL_MIN_ROWS = 8


class Engine:
    """Continuous-batching LLM + streaming decoder over shared models (see module doc)."""

    def __init__(self, llm, sched_config: SchedulerConfig, logit_bias: Optional[torch.Tensor] = None,
                 scheduler_impl: str = "cpp", attention_backend: str = "auto", decode_graphs: str = "auto",
                 batch_decoder: bool = True, overlap_decoder: bool = False) -> None:
        """decode_graphs: "auto" (CUDA graphs for decode-only steps when the model is on CUDA and the
        paged attention runs the Triton kernel), "cuda", "static" (same static buffers, eager: tests),
        or "off". batch_decoder: run the decoder items of one step as one batch across streams
        (results equal per-stream decoding up to floating-point reduction order). overlap_decoder:
        run decoder items on a `DecoderWorker` thread beside the LLM steps instead of inside them."""
        self.llm = llm
        # Held by a decoder round and by CUDA-graph captures: no other thread may launch device
        # work while a graph is being captured.
        self._device_lock = threading.Lock()
        self.config = sched_config
        self.scheduler = make_scheduler(sched_config, scheduler_impl)
        # One extra block past the scheduler's pool: the scratch block padded graph rows write into.
        self.cache = PagedKVCache.for_model(llm, sched_config.num_blocks + 1, sched_config.block_size)
        self.logit_bias = logit_bias
        # Only the logits the bias allows are computed and sampled (audio-only: 5,121 of 74,752 ids).
        self.vocab = None if logit_bias is None else SampledVocab.from_bias(logit_bias)
        self.graphs = self._decode_graphs(decode_graphs, attention_backend)
        _LIVE_ENGINES.add(self)
        self.batch_decoder = batch_decoder
        self.overlap_decoder = overlap_decoder
        self._worker: Optional[DecoderWorker] = None
        self._events = 0  # bumped (under _wake) whenever something may let a stalled loop progress
        self.attention_backend = attention_backend
        self._requests: dict[int, Request] = {}
        self._lock = threading.Lock()          # guards _requests
        self._wake = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._stopping = False
        self.steps = 0
        # Wall seconds spent on LLM steps (engine thread) and on decoder items (engine thread, or the
        # decoder worker when overlapped); both include waiting for the device where results are
        # read back (sampling reads logits, emitting reads audio).
        self.busy_s = {"llm": 0.0, "decoder": 0.0}

    def _decode_graphs(self, mode: str, backend: str) -> Optional[PagedDecodeGraphs]:
        if mode == "auto":
            dev = self.llm.device
            mode = "cuda" if dev.type == "cuda" and alibi_uses_triton(dev, self.llm.config.head_dim, backend) else "off"
        if mode == "off":
            return None
        cfg = self.config
        return PagedDecodeGraphs(self.llm, self.cache, -(-cfg.max_model_len // cfg.block_size), cfg.num_blocks,
                                 cfg.max_num_seqs, mode, backend, capture_lock=self._device_lock,
                                 vocab_ranges=self._vocab_ranges)

    @property
    def _vocab_ranges(self):
        return None if self.vocab is None else self.vocab.ranges

    @torch.inference_mode()
    def warmup(self) -> int:
        """Capture the LLM decode graphs of every batch bucket now (see `PagedDecodeGraphs.warmup`);
        before traffic only. Returns the number of buckets (0 without graphs)."""
        if self.active():
            raise EditXError("Engine.warmup: requests are running; warm up before submitting any")
        return 0 if self.graphs is None else self.graphs.warmup()

    # -- submission (any thread) -----------------------------------------------------------
    def submit(self, req: Request) -> int:
        """Queue a request; returns its id. The engine thread starts if it is not running."""
        with self._lock:
            rid = self.scheduler.submit(req.prompt_ids, arrival=time.monotonic(), priority=req.priority)
            req.id = rid
            req.state = "waiting"
            req.timeline["submitted"] = time.perf_counter()
            self._requests[rid] = req
        self._ensure_thread()
        self._signal()
        return rid

    def cancel(self, req: Request) -> None:
        """End `req` now: its blocks are freed by the next step, its stream gets no more chunks."""
        req.cancel_event.set()
        if not req.done:
            self.scheduler.cancel(req.id)
        self._signal()

    def _signal(self) -> None:
        """Wake the engine loop: new work or a finished decoder item may let it progress."""
        with self._wake:
            self._events += 1
            self._wake.notify()

    def active(self) -> int:
        with self._lock:
            return len(self._requests)

    def stats(self) -> dict:
        return {**self.scheduler.stats(), "engine_steps": self.steps, "active_requests": self.active(),
                "llm_busy_s": self.busy_s["llm"], "decoder_busy_s": self.busy_s["decoder"]}

    # -- the loop ---------------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stopping = False
            if self.overlap_decoder and self._worker is None:
                self._worker = DecoderWorker(self.llm.device, self.batch_decoder, self._emit, self._decoder_done,
                                             self._fail, self._count_decoder_round, self._device_lock)
            self._thread = threading.Thread(target=self._loop, name="editx-engine", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stopping:
            with self._wake:
                while not self._stopping and self.active() == 0:
                    self._wake.wait(timeout=0.5)
                seen = self._events
            if self._stopping:
                return
            try:
                progressed = self.step(time.monotonic())
            except Exception as exc:  # a failure of the shared step fails every live request
                log.exception("engine step failed")
                try:
                    self._fail_all(exc)
                except Exception:  # never let the engine thread die: readers would wait forever
                    log.exception("failing the live requests failed")
                continue
            if not progressed:  # e.g. every live stream waits for its decoder item: sleep until one ends
                with self._wake:
                    if self._events == seen and not self._stopping:
                        self._wake.wait(timeout=0.05)

    def shutdown(self) -> None:
        """Stop the engine thread; live requests end with an EditXError (their readers wake up)."""
        self._stopping = True
        with self._wake:
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        with self._lock:
            live = list(self._requests.values())
            self._requests.clear()
        for req in live:
            if not req.done:
                self.scheduler.cancel(req.id)
                req.state = CANCELLED
                req.out.put(EditXError("the runtime was closed while this request was running"))

    def run_until_idle(self, max_steps: int = 1_000_000) -> None:
        """Drive steps on the calling thread until no request is active (tests, benchmarks)."""
        for _ in range(max_steps):
            if self.active() == 0:
                return
            if not self.step(time.monotonic()) and self._worker is not None:
                time.sleep(0.001)  # decoder items in flight on the worker
        raise EditXError(f"engine still busy after {max_steps} steps")

    # -- one step ---------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, now: float) -> bool:
        """Run one planned step; returns whether it did anything (LLM rows, decoder items, endings)."""
        plan = self.scheduler.step(now)
        self.steps += 1
        for rid, reason in plan.ended:
            self._end(rid, int(reason))
        if len(plan.copies):
            self.cache.copy_blocks([tuple(p) for p in plan.copies.tolist()])
        if len(plan.scheduled_req_ids):
            t0 = time.perf_counter()
            self._run_llm(plan)
            self.busy_s["llm"] += time.perf_counter() - t0
        if plan.decoder:
            self._run_decoders(plan.decoder)
        return bool(len(plan.scheduled_req_ids) or plan.decoder or len(plan.ended))

    def _run_llm(self, plan) -> None:
        rids = plan.scheduled_req_ids.tolist()
        if not len(plan.prefill_req_ids) and self.graphs is not None and self.graphs.bucket(len(rids)) is not None:
            reqs, logits = self._decode_step(plan, rids)
        else:
            reqs, logits = self._mixed_step(plan, rids)
        if not reqs:
            return
        next_ids = select_next_ids(logits, reqs, self.logit_bias, self.vocab)
        self.scheduler.append_batch([r.id for r in reqs], next_ids)
        for req, tok in zip(reqs, next_ids):
            if not req.generated:
                req.timeline["first_token"] = time.perf_counter()
            req.generated.append(tok)
            req.state = "running"
            self._check_stop(req, tok)

    def _decode_step(self, plan, rids: list[int]):
        """A decode-only step on the static buffers / CUDA graph, fed from the plan's arrays: with 64
        streams the per-row chunk objects and the row-by-row buffer fill took ~1 ms of host time per step
        (CPU, dummy:tiny), next to a ~3 ms graph replay of the real model. Returns (requests, logits)."""
        reqs = [self._requests[rid] for rid in rids]
        positions = plan.context_lens.astype(np.int64) - 1  # each row's one new token sits at context_len - 1
        where = positions.tolist()
        tokens = [_token_at(req, p) for req, p in zip(reqs, where)]
        if len(rids) < ARRAY_FILL_MIN_ROWS:
            chunks = [SequenceChunk([tok], p, plan.block_table(i).tolist())
                      for i, (tok, p) in enumerate(zip(tokens, where))]
            return reqs, self.graphs.run(chunks)
        return reqs, self.graphs.run_decode(tokens, positions, plan.block_table_offsets, plan.block_table_ids)

    def _mixed_step(self, plan, rids: list[int]):
        """A step with prefill chunks (or beyond the decode buckets): one packed batch. Returns the
        requests that sample this step and their logits."""
        chunks, sample_rows = [], []
        n_prefill = len(plan.prefill_req_ids)
        for i, rid in enumerate(rids):
            req = self._requests[rid]
            end = int(plan.context_lens[i])
            count = int(plan.prefill_counts[i]) if i < n_prefill else 1
            chunks.append(SequenceChunk(_token_slice(req, end - count, end), end - count,
                                        plan.block_table(i).tolist()))
            if i >= n_prefill or bool(plan.prefill_is_last[i]):
                sample_rows.append(i)
        batch = PagedBatch.build(chunks, self.cache.block_size, self.llm.device)
        logits = self.llm.forward_paged(batch, self.cache, self.attention_backend, self._vocab_ranges)
        reqs = [self._requests[rids[i]] for i in sample_rows]
        return reqs, logits if len(sample_rows) == len(logits) else logits[sample_rows]

    def _check_stop(self, req: Request, tok: int) -> None:
        if tok == req.params.stop_id:
            req.stop_reason = "stop_id"
            self.scheduler.finish(req.id, FinishReason.EOS)
        elif len(req.generated) >= req.new_token_limit:
            req.stop_reason = "length"
            self.scheduler.finish(req.id, FinishReason.LENGTH)

    def _run_decoders(self, items) -> None:
        """This step's decoder items: one `decode_batch` over all their streams (set-ups, flow chunks
        and vocoder calls of different streams batched), here or on the worker; a failure ends only
        its stream."""
        tasks = []
        for item in items:
            req = self._requests.get(item.req_id)
            if req is None or req.cancel_event.is_set():
                continue
            # The item's window [start, start + num_feed) is the chunk plus its lookahead; the
            # lookahead ids were already fed with the previous item, so feed only the new ones.
            end = item.start + item.num_feed
            ids = llm_ids_to_mixed(req.generated[req.decoded:end])
            req.decoded = max(req.decoded, end)
            if req.chunks_out == 0:  # the last dispatch before the first chunk is the one that makes it
                req.timeline["first_chunk_dispatched"] = time.perf_counter()
            tasks.append(DecoderTask(req, ids, bool(item.is_last)))
        if not tasks:
            return
        if self._worker is not None:
            self._worker.submit(tasks)
            return
        t0 = time.perf_counter()
        run_tasks(tasks, self.batch_decoder, self._emit, self._decoder_done, self._fail)
        self._count_decoder_round(time.perf_counter() - t0)

    def _decoder_done(self, req: Request, chunks, last: bool) -> None:
        """A decoder item ended (its chunks are queued): the scheduler may plan the stream's next."""
        self.scheduler.decoder_done(req.id, sum(c.numel() for c in chunks) / OUTPUT_RATE, time.monotonic())
        self._signal()

    def _count_decoder_round(self, seconds: float) -> None:
        self.busy_s["decoder"] += seconds

    def _emit(self, req: Request, audio: torch.Tensor, last: bool) -> None:
        if req.state in (CANCELLED, FAILED) or req.error is not None:
            return  # ended while its decoder item ran on the worker: its reader is gone
        samples = np.ascontiguousarray(audio.detach().float().cpu().numpy().reshape(-1), dtype=np.float32)
        if samples.size:
            req.timeline.setdefault("first_audio", time.perf_counter())
        usage = StreamUsage(len(req.prompt_ids), len(req.generated), req.stop_reason) if last else None
        req.out.put(AudioChunk(samples, OUTPUT_RATE, req.chunks_out, last, usage))
        req.chunks_out += 1
        if getattr(req.out, "closed", False):  # an asyncio consumer whose loop closed: stop its work
            self.cancel(req)

    # -- endings ----------------------------------------------------------------------------
    def _end(self, rid: int, reason: int) -> None:
        with self._lock:
            req = self._requests.pop(rid, None)
        if req is None:
            return
        if reason in (FinishReason.CANCELLED, FinishReason.ERROR):
            req.t2w.close()  # its DiT cache slot (if any) goes back to the pool now
            req.state = CANCELLED if reason == FinishReason.CANCELLED else FAILED
        else:
            req.state = FINISHED
            if req.chunks_out == 0 or not req.t2w.finished:
                # no decoder item ever ran (fewer than 5 audio ids): still end the stream properly
                self._emit(req, torch.zeros(0), True)
        req.out.put(None)

    def _fail(self, req: Request, exc: BaseException) -> None:
        req.error = exc
        req.state = FAILED  # now, not at the next step's ending: the reader sees `exc` next and may look
        self.scheduler.finish(req.id, FinishReason.ERROR)
        req.out.put(exc)
        self._signal()

    def _fail_all(self, exc: BaseException) -> None:
        with self._lock:
            live = list(self._requests.values())
        for req in live:
            if not req.done:
                self._fail(req, exc)


def _token_at(req: Request, position: int) -> int:
    """Id at `position` of prompt + generated."""
    n = len(req.prompt_ids)
    return req.generated[position - n] if position >= n else req.prompt_ids[position]


def _token_slice(req: Request, start: int, end: int) -> list[int]:
    """Ids [start, end) of prompt + generated without building the whole concatenation (a decode
    step needs one id; a long request's full list would be copied every step otherwise)."""
    n = len(req.prompt_ids)
    if start >= n:
        return req.generated[start - n:end - n]
    return req.prompt_ids[start:min(end, n)] + req.generated[:max(end - n, 0)]

