"""Several requests spoken one after another as one stream (long text split into pieces).

Piece k+1 is submitted when piece k's first chunk arrives, so it generates while piece k plays and
its first audio is ready when piece k ends: no gap, and at most two engine rows per stream. The
chunks are renumbered into one sequence; only the very last carries `is_last` and the summed
`StreamUsage` (stop_reason "length" if any piece was cut by the token limit).
"""
from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from typing import AsyncIterator, Callable, Optional

from ..types import AudioChunk, StreamUsage
from .jobs import ChunkStream, ClosingIterator


class _Relabel:
    """Chunks of piece k → chunks of the joined stream (index, is_last, usage)."""

    def __init__(self, n_pieces: int) -> None:
        self.n_pieces, self.index = n_pieces, 0
        self.prompt = self.generated = 0
        self.cut = False

    def __call__(self, chunk: AudioChunk, piece: int) -> Optional[AudioChunk]:
        final = chunk.is_last and piece == self.n_pieces - 1
        if chunk.usage is not None:
            self.prompt += chunk.usage.prompt_tokens
            self.generated += chunk.usage.generated_tokens
            self.cut |= chunk.usage.stop_reason == "length"
        if not final and chunk.samples.size == 0:
            return None  # an empty end-of-piece marker: nothing to play
        usage = None
        if final:
            reason = "length" if self.cut else (chunk.usage.stop_reason if chunk.usage else None)
            usage = StreamUsage(self.prompt, self.generated, reason)
        out = replace(chunk, index=self.index, is_last=final, usage=usage)
        self.index += 1
        return out


class PieceStream(ClosingIterator):
    """Blocking iterator over the joined chunks of `n` pieces; `start(k)` submits piece k and returns
    its `ChunkStream`. `close()` cancels the running and the prefetched piece."""

    def __init__(self, start: Callable[[int], ChunkStream], n: int) -> None:
        self._start, self._n = start, n
        self._relabel = _Relabel(n)
        self._piece = 0
        self._current = start(0)
        self._next = None
        self.requests = [self._current.request]
        self._closed = False

    def __next__(self) -> AudioChunk:
        while not self._closed:
            try:  # a failing piece (or a next piece that cannot start) ends the whole stream, cancelling the rest
                chunk = next(self._current)
                if self._next is None and self._piece + 1 < self._n:
                    self._next = self._start(self._piece + 1)  # generates while this piece plays
                    self.requests.append(self._next.request)
            except BaseException:
                self.close()
                raise
            out = self._relabel(chunk, self._piece)
            if chunk.is_last:
                self._advance()
            if out is not None:
                return out
        raise StopIteration

    def _advance(self) -> None:
        if self._piece + 1 == self._n:
            self._closed = True
            return
        self._piece += 1
        self._current, self._next = self._next, None

    def close(self) -> None:
        self._closed = True
        for stream in (self._current, self._next):
            if stream is not None:
                stream.close()


async def achain_pieces(start: Callable[[int], AsyncIterator[AudioChunk]], n: int) -> AsyncIterator[AudioChunk]:
    """asyncio twin of `PieceStream`: `start(k)` returns piece k's chunk generator (submitted on its
    first `__anext__`, which is started as soon as piece k-1's first chunk is out)."""
    relabel = _Relabel(n)
    gens = [start(0)]
    prefetch: Optional[asyncio.Future] = None
    try:
        for piece in range(n):
            gen, first = gens[piece], prefetch
            prefetch = None
            while True:
                try:
                    chunk = await first if first is not None else await gen.__anext__()
                except StopAsyncIteration:
                    break
                first = None
                if len(gens) == piece + 1 and piece + 1 < n:
                    gens.append(start(piece + 1))
                    prefetch = asyncio.ensure_future(gens[-1].__anext__())
                out = relabel(chunk, piece)
                if out is not None:
                    yield out
                if chunk.is_last:
                    break
    finally:
        if prefetch is not None:
            prefetch.cancel()
            with contextlib.suppress(BaseException):
                await prefetch
        for gen in gens:
            await gen.aclose()
