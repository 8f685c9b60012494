"""Running one prepared request: offline (upstream's whole-utterance path) or streamed.

A `Job` is a validated request: LLM prompt ids, the voice, sampling parameters with a
concrete seed, and the text its audio will speak. `OfflineRunner` generates every token
(CUDA-graphed static-cache decode on CUDA) and then decodes the whole utterance, exactly
as upstream's tts.py; `StreamRunner` hands jobs to the continuous-batching `Engine` and
yields `AudioChunk`s as they are produced (sync and asyncio forms). Closing a stream
cancels its request; every stream ends with exactly one chunk marked `is_last`.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Iterator, Optional

import numpy as np
import torch

from ..errors import EditXError
from ..models.interleave import llm_ids_to_mixed
from ..types import OUTPUT_SAMPLE_RATE, Audio, AudioChunk
from .engine import Engine
from .generate import generate
from .model_runner import GraphedDecoder
from .request import Request
from .sampling import SamplingParams
from .scheduler import SchedulerConfig
from .token2wav import Token2Wav, to_numpy
from .voice import VoicePrompt

log = logging.getLogger("editx")


@dataclass(frozen=True)
class Job:
    """A validated request (see module doc)."""

    prompt_ids: list[int]
    voice: VoicePrompt
    params: SamplingParams
    text: str


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class OfflineRunner:
    """Upstream's path: generate everything, then token2wav over the whole utterance."""

    def __init__(self, llm, decoder: Token2Wav, logit_bias: Optional[torch.Tensor], cuda_graphs: bool,
                 max_length: int, report: Callable[[str], None]) -> None:
        self.llm, self.decoder, self.logit_bias, self.report = llm, decoder, logit_bias, report
        self.use_graphs = cuda_graphs and llm.device.type == "cuda"
        self.max_length = max_length
        self._graphed: Optional[GraphedDecoder] = None
        self._init = threading.Lock()

    def run(self, job: Job, on_token: Optional[Callable[[int], None]] = None) -> Audio:
        device = self.llm.device
        t0 = _clock(device)
        result = self._generate(job, on_token)
        t1 = _clock(device)
        mixed = llm_ids_to_mixed(result.ids)
        gen = torch.Generator(device=device).manual_seed(job.params.seed + 1)
        samples = np.zeros(0, dtype=np.float32)
        if mixed:
            speech, _ = self.decoder.offline(torch.tensor(mixed), job.voice.conditioning, generator=gen)
            samples = to_numpy(speech)
        t2 = _clock(device)
        info = {**job.voice.timings, "prompt_tokens": len(job.prompt_ids), "generated_tokens": len(result.raw_ids),
                "stop_reason": result.stop_reason, "llm_s": t1 - t0, "token2wav_s": t2 - t1,
                "audio_s": len(samples) / OUTPUT_SAMPLE_RATE}
        self.report(f"done: {info['audio_s']:.2f} s of audio from {len(result.raw_ids)} tokens "
                    f"(LLM {info['llm_s']:.2f} s, decoder {info['token2wav_s']:.2f} s)")
        return Audio(samples, OUTPUT_SAMPLE_RATE, job.text, info)

    def _generate(self, job: Job, on_token):
        kwargs = dict(on_token=on_token, logit_bias=self.logit_bias)
        if not self.use_graphs:
            return generate(self.llm, job.prompt_ids, job.params, **kwargs)
        runner = self._runner()
        with runner.lock:
            return generate(self.llm, job.prompt_ids, job.params, cache=runner.cache, decode_step=runner.step,
                            **kwargs)

    def _runner(self) -> GraphedDecoder:
        with self._init:
            if self._graphed is None:
                self._graphed = GraphedDecoder(self.llm, batch=1, capacity=self.max_length)
        return self._graphed


class _AsyncSink:
    """`Request.out` for asyncio callers: the engine thread's puts land in an asyncio.Queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.queue = loop, asyncio.Queue()
        self.closed = False  # the consumer's event loop is gone: nobody will read this stream again

    def put(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # "Event loop is closed": the engine cancels the request (Engine._emit)
            self.closed = True


class StreamRunner:
    """Streams jobs through a shared continuous-batching Engine (created on first use)."""

    def __init__(self, llm, decoder: Token2Wav, logit_bias: Optional[torch.Tensor], sched_config: SchedulerConfig,
                 attention_backend: str = "auto", batch_decoder: bool = True, overlap_decoder: bool = False) -> None:
        self.llm, self.decoder, self.logit_bias = llm, decoder, logit_bias
        self.sched_config, self.attention_backend = sched_config, attention_backend
        self.batch_decoder, self.overlap_decoder = batch_decoder, overlap_decoder
        self._engine: Optional[Engine] = None
        self._init = threading.Lock()

    @property
    def engine(self) -> Engine:
        with self._init:
            if self._engine is None:
                self._engine = Engine(self.llm, self.sched_config, self.logit_bias,
                                      attention_backend=self.attention_backend, batch_decoder=self.batch_decoder,
                                      overlap_decoder=self.overlap_decoder)
        return self._engine

    def request(self, job: Job, priority: int = 0) -> Request:
        """A fresh per-request state object for `job` (RNGs seeded from the job's seed)."""
        device = self.llm.device
        hift_gen = torch.Generator(device=device).manual_seed(job.params.seed + 1)
        # The sampling generator lives on the CPU: the engine draws each row's uniforms there (no kernel
        # launch per row, `sampling.draw_rows`); the NSF noise generator stays on the device.
        return Request(0, list(job.prompt_ids), job.params, job.params.make_generator("cpu"),
                       self.decoder.stream(job.voice.conditioning, generator=hift_gen), job.text, priority)

    def stream(self, job: Job, priority: int = 0) -> "ChunkStream":
        """Chunks of `job` as they are produced; closing the stream cancels the request."""
        req = self.request(job, priority)
        self.engine.submit(req)
        return ChunkStream(req, self.engine)

    async def astream(self, job: Job, priority: int = 0) -> AsyncIterator[AudioChunk]:
        """asyncio twin of `stream`."""
        req = self.request(job, priority)
        sink = _AsyncSink(asyncio.get_running_loop())
        req.out = sink
        self.engine.submit(req)
        complete = False  # the is_last chunk was handed out: nothing left to cancel
        try:
            while True:
                item = await sink.queue.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                complete = item.is_last
                yield item
        finally:
            if not complete and not req.done and not req.cancel_event.is_set():
                self.engine.cancel(req)

    def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()


class ClosingIterator:
    """A blocking chunk iterator whose `close()` cancels what it still runs: leaving a `with` block or
    dropping the iterator closes it too. Subclasses define `__next__` and `close`."""

    def __iter__(self):
        return self

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to cancel
            pass


class ChunkStream(ClosingIterator):
    """Iterator over one request's AudioChunks (blocking). `close()` (or leaving a `with`
    block, or dropping the iterator) cancels the request if it is still running."""

    def __init__(self, req: Request, engine: Engine) -> None:
        self.request, self._engine, self._closed = req, engine, False

    def __next__(self) -> AudioChunk:
        if self._closed:
            raise StopIteration
        item = self.request.out.get()
        if item is None:
            self._closed = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._closed = True
            raise item
        self._closed = item.is_last  # complete: a later close() must not cancel a finished request
        return item

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if not self.request.done:
                self._engine.cancel(self.request)


def collect(chunks: Iterator[AudioChunk], text: str) -> Audio:
    """Concatenate a stream into one Audio (the streamed equivalent of an offline call)."""
    start = time.perf_counter()
    parts, first, n = [], None, 0
    last = None
    for chunk in chunks:
        if last is not None:
            raise EditXError("stream continued after its is_last chunk")
        if first is None and chunk.samples.size:
            first = time.perf_counter() - start
        parts.append(chunk.samples)
        n += 1
        last = chunk if chunk.is_last else None
    if last is None:
        raise EditXError("stream ended without an is_last chunk")
    samples = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    info = {"chunks": n, "ttfa_s": first, "total_s": time.perf_counter() - start,
            "audio_s": samples.size / OUTPUT_SAMPLE_RATE}
    if last.usage is not None:
        info.update(prompt_tokens=last.usage.prompt_tokens, generated_tokens=last.usage.generated_tokens,
                    stop_reason=last.usage.stop_reason)
    return Audio(samples.astype(np.float32, copy=False), OUTPUT_SAMPLE_RATE, text, info)
