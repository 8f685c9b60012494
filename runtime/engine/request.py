"""Per-request state of the streaming engine, and next-token selection over any set of requests.

Everything a request owns lives here — its prompt and generated ids, its RNGs, its
repetition window, its streaming decoder state and its output queue — never on a shared
model. `select_next_ids` applies upstream's processors (repetition ban → temperature →
top-k → draw, spec §4.5) to whichever requests the scheduler ran this step, each
with its own generator, so a request draws exactly the ids it would draw alone.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from .sampling import RepetitionAwareProcessor, SampledVocab, SamplingParams, apply_temperature, draw_rows
from .token2wav import Token2WavStream

# Terminal states; a request ends in exactly one of them.
FINISHED, CANCELLED, FAILED = "finished", "cancelled", "failed"


@dataclass(eq=False)
class Request:
    """One clone/edit request as the engine sees it.

    prompt_ids: the LLM prompt. generated: every generated id (upstream later drops the last,
    so only generated[:-1] ever reaches the decoder). decoded: ids already fed to `t2w`.
    out: AudioChunk / exception / None (end) items for the caller's iterator.
    """

    id: int
    prompt_ids: list[int]
    params: SamplingParams
    generator: torch.Generator
    t2w: Token2WavStream
    text: str
    priority: int = 0
    generated: list[int] = field(default_factory=list)
    decoded: int = 0
    chunks_out: int = 0
    state: str = "waiting"
    stop_reason: Optional[str] = None
    error: Optional[BaseException] = None
    out: "queue.Queue" = field(default_factory=queue.Queue)
    cancel_event: threading.Event = field(default_factory=threading.Event)
    # time.perf_counter() stamps of the first-audio path (benchmarks break TTFA down with them):
    # "submitted", "first_token", "first_chunk_dispatched" (its ids exist; decoder starts), "first_audio".
    timeline: dict[str, float] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.state in (FINISHED, CANCELLED, FAILED)

    @property
    def new_token_limit(self) -> int:
        return self.params.new_token_limit(len(self.prompt_ids))

    def history_tail(self, window: int) -> list[int]:
        """The last `window` ids of prompt + generated (the repetition processor's window)."""
        need = window - len(self.generated)
        head = self.prompt_ids[-need:] if need > 0 else []
        return head + self.generated[-window:]

    def seen(self) -> int:
        return len(self.prompt_ids) + len(self.generated)


def select_next_ids(logits: torch.Tensor, requests: Sequence[Request],
                    logit_bias: Optional[torch.Tensor] = None, vocab: Optional[SampledVocab] = None) -> list[int]:
    """Next id for each request from its row of `logits` [S, V] (fp32 or model dtype), or [S, n]
    logits of `vocab`'s columns only (then no bias is needed: every other id is excluded).

    Same math as `sampling.Sampler`, with rows assembled per step from each request's own
    history, parameters and generator (requests of one step may differ in all three).
    """
    scores = logits.float()
    if logit_bias is not None and vocab is None:
        scores = scores + logit_bias
    column_of = None if vocab is None else vocab.column_of
    windows = {r.params.repetition_window for r in requests}
    thresholds = {r.params.repetition_threshold for r in requests}
    if len(windows) == 1 and len(thresholds) == 1:
        scores = _ban_repeats(scores, requests, windows.pop(), thresholds.pop(), column_of)
    else:  # rare: per-request processor settings differ; apply row by row
        scores = torch.cat([_ban_repeats(scores[i:i + 1], [r], r.params.repetition_window,
                                         r.params.repetition_threshold, column_of) for i, r in enumerate(requests)])
    # Rows sharing (greedy, temperature, top_k) — usually all of them — are warped as one block: the
    # same scalar ops per row as one row at a time (row-independent), in ~6 launches instead of ~6 per
    # row (at 64 streams that was ~400 small launches per step). Each draw still uses its request's
    # own generator, so a request's ids do not depend on who else is in the step.
    out = torch.empty(len(requests), dtype=torch.long, device=scores.device)
    for (greedy, temperature, top_k), rows in _param_groups(requests).items():
        block = scores if len(rows) == len(requests) else scores[rows]
        if greedy:
            out[rows] = block.argmax(dim=-1)
            continue
        out[rows] = _draw(block, temperature, top_k, [requests[i].generator for i in rows])
    if vocab is not None:
        out = vocab.ids[out]  # columns → vocabulary ids
    return out.to(device="cpu").tolist()


def _draw(scores: torch.Tensor, temperature: float, top_k: int, generators: Sequence[torch.Generator],
          draw: Callable = draw_rows) -> torch.Tensor:
    """One draw per row from softmax(top_k(scores / temperature)) `[G, V]` (upstream's warpers, ties at
    the k-th value kept) with that row's generator → `[G]` ids.

    Only the kept ids have nonzero probability, so the draw runs over them: the same distribution as a
    draw over the whole vocabulary, from ~50 entries instead of 74,752. Dividing by the temperature
    does not change which ids are kept, so only the kept values are divided. The draw itself is one
    batched inverse-CDF pass for the block (`draw_rows`: no launch per row), so a step costs 2 passes
    over the vocabulary and ~10 launches whatever the number of rows (`benchmarks/e2e/bench_sampling.py`).
    Upstream draws over the whole vocabulary with multinomial; its draws are not reproducible across
    devices anyway, and the parity fixtures fix the scores before the draw, not the draw.
    `draw` = another `draw_rows`-shaped function (the benchmark's baseline).
    """
    if top_k <= 0:
        return draw(apply_temperature(scores, temperature), generators)
    k = min(top_k, scores.shape[-1])
    values, ids = torch.topk(scores, k, dim=-1)  # [G, k] descending
    kth = values[:, -1:]
    kept = int((scores >= kth).sum(dim=-1).max())  # > k when the k-th value is tied (HF keeps ties)
    if kept > k:
        values, ids = torch.topk(scores, kept, dim=-1)
        values = values.masked_fill(values < kth, float("-inf"))  # rows with fewer ties
    picks = draw(apply_temperature(values, temperature), generators)  # [G] positions in `values`
    return ids.gather(1, picks.view(-1, 1)).view(-1)


def _param_groups(requests: Sequence[Request]) -> dict[tuple[bool, float, int], list[int]]:
    """Row indices by sampling parameters (greedy, temperature, top_k), in row order."""
    groups: dict[tuple[bool, float, int], list[int]] = {}
    for i, r in enumerate(requests):
        p = r.params
        key = (True, 1.0, 0) if p.greedy else (False, float(p.temperature), int(p.top_k))
        groups.setdefault(key, []).append(i)
    return groups


def _ban_repeats(scores: torch.Tensor, requests: Sequence[Request], window: int, threshold: float,
                 column_of: Optional[torch.Tensor] = None) -> torch.Tensor:
    rows = [[-1] * (window - len(t)) + t for t in (r.history_tail(window) for r in requests)]
    recent = torch.tensor(rows, dtype=torch.long, device=scores.device)
    seen = torch.tensor([r.seen() for r in requests], dtype=torch.long, device=scores.device)
    return RepetitionAwareProcessor(window, threshold).apply(recent, seen, scores, column_of)
