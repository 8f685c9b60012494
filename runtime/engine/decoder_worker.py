"""Decoder items of the streaming engine, run beside the LLM loop instead of inside it.

In the synchronous engine one step is "LLM forward, then every due decoder item", so a
stream's flow set-up (an ODE solve over the whole prompt) or a 48-frame chunk stalls the
next LLM step of every stream. Measured on CPU (dummy:tiny, bench_stream.py) the first
chunk's ids arrived 835 ms after the first token, much of it LLM steps queued behind decoder
work. `DecoderWorker` takes the items the scheduler plans and runs them on their own thread
(and, on CUDA, their own stream) while the engine keeps stepping the LLM.

Ordering stays the scheduler's: it plans at most one decoder item per stream at a time and
plans the next only after `decoder_done`, which the worker calls when the item's chunks are
on the request's queue. Items that become due while the worker is busy run together as one
`decode_batch` next round. A failure ends only its stream.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .request import Request
from .token2wav import decode_batch

log = logging.getLogger("editx")


@dataclass
class DecoderTask:
    """One planned decoder item: feed `ids` (mixed ids) to `req`'s stream; `last` flushes it."""

    req: Request
    ids: list[int]
    last: bool


Emit = Callable[[Request, torch.Tensor, bool], None]
Done = Callable[[Request, Sequence[torch.Tensor], bool], None]
Fail = Callable[[Request, BaseException], None]


def run_tasks(tasks: Sequence[DecoderTask], batch: bool, emit: Emit, done: Done, fail: Fail) -> None:
    """Run decoder tasks (one per stream) now: batched across streams or one by one; chunks go to
    `emit`, then `done` reports the item; a task whose stream raises goes to `fail` instead."""
    work = [(t.req.t2w, t.ids, t.last) for t in tasks]
    if batch:
        results = decode_batch(work, return_exceptions=True)
    else:
        results = [_push(stream, ids, last) for stream, ids, last in work]
    for task, result in zip(tasks, results):
        if isinstance(result, BaseException):
            fail(task.req, result)
            continue
        for k, audio in enumerate(result):
            emit(task.req, audio, task.last and k == len(result) - 1)
        if task.last and not result:
            emit(task.req, torch.zeros(0), True)
        done(task.req, result, task.last)


def _push(stream, ids, last):
    try:
        return stream.push(ids, last=last)
    except Exception as exc:  # this stream fails; the others continue
        return exc


class DecoderWorker:
    """A thread that runs submitted `DecoderTask`s in rounds (see module doc).

    `exclusive` is held while a round runs: the engine takes it around CUDA-graph captures,
    during which no other thread may launch work on the device.
    """

    def __init__(self, device: torch.device, batch: bool, emit: Emit, done: Done, fail: Fail,
                 on_round: Callable[[float], None], exclusive: threading.Lock) -> None:
        self.batch, self._emit, self._done, self._fail, self._on_round = batch, emit, done, fail, on_round
        self.device = device
        self.exclusive = exclusive
        self._cond = threading.Condition()
        self._pending: list[DecoderTask] = []
        self._stopping = False
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._thread = threading.Thread(target=self._loop, name="editx-decoder", daemon=True)
        self._thread.start()

    def submit(self, tasks: Sequence[DecoderTask]) -> None:
        with self._cond:
            self._pending.extend(tasks)
            self._cond.notify()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                tasks, self._pending = self._pending, []
            live = [t for t in tasks if not t.req.done and not t.req.cancel_event.is_set()]
            start = time.perf_counter()
            try:
                if live:
                    with self.exclusive, torch.inference_mode(), self._device_stream():
                        run_tasks(live, self.batch, self._emit, self._done, self._fail)
            except Exception as exc:  # run_tasks isolates streams; anything else fails the round's streams
                log.exception("decoder round failed")
                for t in live:
                    self._fail(t.req, exc)
            finally:
                self._on_round(time.perf_counter() - start)

    def _device_stream(self):
        """On CUDA, run on the worker's own stream, after everything already queued on the default
        stream (front-end outputs the streams read may still be in flight there)."""
        if self._stream is None:
            return contextlib.nullcontext()
        self._stream.wait_stream(torch.cuda.default_stream(self.device))
        return torch.cuda.stream(self._stream)

