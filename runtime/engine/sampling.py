"""Next-token selection exactly as upstream's `llm.generate(...)` does it (spec §4.5).

Per step, on the fp32 logits of each row's last position:
  1. RepetitionAwareLogitsProcessor: if the row's last id occurs ≥ 2 times among its
     last 10 ids (ratio > 0.1), that id is banned (−inf); no-op while fewer than 10 ids;
  2. temperature (0.7), 3. top-k (50, HF semantics: ties with the k-th value survive),
  then softmax + multinomial (`torch.multinomial`) with a per-row `torch.Generator`.
Greedy decoding (HF do_sample=False) applies only step 1 and takes the argmax.

Everything here is batched ([B, V] scores) with per-row parameters, and runs on the
logits' device without host synchronisation (the recent-id window is a device tensor).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import InvalidInputError

DEFAULT_MAX_LENGTH = 8192  # upstream generate(max_length=8192): prompt + generated ids


@dataclass(slots=True)
class SamplingParams:
    """Decoding parameters of one request (defaults = upstream tts.py)."""

    temperature: float = 0.7
    top_k: int = 50  # 0 disables top-k (HF semantics)
    repetition_window: int = 10
    repetition_threshold: float = 0.1  # ban when count / window > threshold
    greedy: bool = False
    seed: int | None = None  # None: a fresh random seed per request (upstream is unseeded)
    max_new_tokens: int | None = None
    max_length: int = DEFAULT_MAX_LENGTH  # total ids (prompt + generated), as HF max_length
    stop_id: int = 3  # <|EOT|>

    def __post_init__(self) -> None:
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not self.temperature > 0 or self.temperature != self.temperature:
            raise InvalidInputError(f"temperature: expected a positive number, got {self.temperature!r}")
        _require_int(self.top_k, "top_k", minimum=0)
        _require_int(self.repetition_window, "repetition_window", minimum=1)
        if isinstance(self.repetition_threshold, bool) or not isinstance(self.repetition_threshold, (int, float)) \
                or not 0 <= self.repetition_threshold < 1:
            raise InvalidInputError(f"repetition_threshold: expected a number in [0, 1), got {self.repetition_threshold!r}")
        if not isinstance(self.greedy, bool):
            raise InvalidInputError(f"greedy: expected a bool, got {self.greedy!r}")
        if self.seed is not None:
            _require_int(self.seed, "seed", minimum=0)
        if self.max_new_tokens is not None:
            _require_int(self.max_new_tokens, "max_new_tokens", minimum=1)
        _require_int(self.max_length, "max_length", minimum=2)
        _require_int(self.stop_id, "stop_id", minimum=0)

    def new_token_limit(self, prompt_len: int) -> int:
        """How many ids a prompt of `prompt_len` ids may generate (max_length and max_new_tokens)."""
        limit = self.max_length - prompt_len
        if self.max_new_tokens is not None:
            limit = min(limit, self.max_new_tokens)
        return limit

    def make_generator(self, device: torch.device | str) -> torch.Generator:
        """The request's RNG on `device`, seeded from `seed` (or randomly when None)."""
        gen = torch.Generator(device=device)
        if self.seed is None:
            gen.seed()
        else:
            gen.manual_seed(self.seed)
        return gen


def _require_int(value: object, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInputError(f"{name}: expected an int >= {minimum}, got {value!r}")


# =======================================================================================
# Repetition-aware processor
# =======================================================================================
class RepetitionAwareProcessor:
    """Upstream's RepetitionAwareLogitsProcessor: ban the last id when it repeats in the window.

    `__call__(input_ids [B, N], scores [B, V])` is the upstream-equivalent form (full
    histories of equal length). `apply(recent, seen, scores)` is the batched form over a
    per-row window of the last W ids (see `RecentIds`) for rows of different lengths.
    Both return a new tensor (the input scores are not modified).
    """

    def __init__(self, window: int = 10, threshold: float = 0.1) -> None:
        self.window = int(window)
        self.threshold = float(threshold)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.dim() != 2 or scores.dim() != 2 or input_ids.shape[0] != scores.shape[0]:
            raise InvalidInputError(
                f"input_ids/scores: expected [B, N] and [B, V], got {tuple(input_ids.shape)} and {tuple(scores.shape)}"
            )
        if input_ids.shape[1] < self.window:  # too short a history: no-op, as upstream
            return scores.clone()
        recent = input_ids[:, -self.window:].to(scores.device)
        seen = torch.full((input_ids.shape[0],), input_ids.shape[1], device=scores.device, dtype=torch.long)
        return self.apply(recent, seen, scores)

    def apply(self, recent: torch.Tensor, seen: torch.Tensor, scores: torch.Tensor,
              column_of: torch.Tensor | None = None) -> torch.Tensor:
        """recent: [B, W] last W ids per row (oldest first); seen: [B] ids seen per row; scores [B, V],
        or [B, n] columns of a vocabulary subset with column_of [V] = each id's column (-1: absent,
        so never banned: its score does not exist)."""
        last = recent[:, -1:]  # [B, 1]
        counts = (recent == last).sum(dim=1)  # [B]
        last = last.clamp(min=0)  # an empty history's -1 filler (never banned) must stay a valid index
        # Same comparison as upstream (fp32 ratio vs threshold): ≥ 2 of 10 for the defaults.
        banned = (counts.float() / self.window > self.threshold) & (seen >= self.window)
        if column_of is not None:
            last = column_of[last]
            banned &= last[:, 0] >= 0
            last = last.clamp(min=0)
        current = scores.gather(1, last)
        return scores.scatter(1, last, torch.where(banned[:, None], torch.full_like(current, float("-inf")), current))


def allowed_ranges(bias: torch.Tensor, max_ranges: int = 8) -> list[tuple[int, int]] | None:
    """The [start, end) id runs where a logit bias `[V]` is finite (the ids that can ever be sampled),
    or None when there are more than `max_ranges` runs (then computing every logit is simpler)."""
    finite = torch.isfinite(bias.detach().cpu()).tolist()
    runs, start = [], None
    for i, ok in enumerate(finite + [False]):
        if ok and start is None:
            start = i
        elif not ok and start is not None:
            runs.append((start, i))
            start = None
    return runs if 0 < len(runs) <= max_ranges else None


@dataclass(frozen=True)
class SampledVocab:
    """The ids the engine may sample (where the audio-only logit bias is finite: 5,121 of 74,752),
    as contiguous `ranges`: the LM head computes only these columns (`Step1Model.logits_for_ranges`)
    and sampling runs over them. ids `[n]`: vocabulary id of each column; column_of `[V]`: each id's
    column, -1 for the rest."""

    ranges: tuple[tuple[int, int], ...]
    ids: torch.Tensor
    column_of: torch.Tensor

    @classmethod
    def from_bias(cls, bias: torch.Tensor) -> "SampledVocab | None":
        """The subset a logit bias `[V]` allows, or None when it is not a few contiguous runs."""
        ranges = allowed_ranges(bias)
        if ranges is None:
            return None
        ids = torch.cat([torch.arange(a, b) for a, b in ranges])
        column_of = torch.full((bias.shape[0],), -1, dtype=torch.long)
        column_of[ids] = torch.arange(ids.numel())
        return cls(tuple(ranges), ids.to(bias.device), column_of.to(bias.device))


class RecentIds:
    """Per-row ring of the last W ids (device tensors; no host sync to update).

    recent: [B, W] (oldest first, left-filled with -1 while a row has < W ids);
    seen: [B] total ids seen per row.
    """

    def __init__(self, histories: Sequence[Sequence[int]], window: int, device: torch.device | str) -> None:
        rows = []
        for history in histories:
            tail = [int(i) for i in history[-window:]]
            rows.append([-1] * (window - len(tail)) + tail)
        self.recent = torch.tensor(rows, dtype=torch.long, device=device).view(len(rows), window)
        self.seen = torch.tensor([len(h) for h in histories], dtype=torch.long, device=device)

    def push(self, new_ids: torch.Tensor, active: torch.Tensor | None = None) -> None:
        """Append new_ids [B] to each row (rows where `active` [B] is False keep their window)."""
        shifted = torch.cat([self.recent[:, 1:], new_ids.view(-1, 1).to(self.recent)], dim=1)
        if active is None:
            self.recent, self.seen = shifted, self.seen + 1
        else:
            self.recent = torch.where(active[:, None], shifted, self.recent)
            self.seen = self.seen + active.long()


# =======================================================================================
# Warpers and selection
# =======================================================================================
def apply_temperature(scores: torch.Tensor, temperature: torch.Tensor | float) -> torch.Tensor:
    """scores [B, V] / temperature (a float, or [B] per row)."""
    if isinstance(temperature, torch.Tensor):
        return scores / temperature.to(scores).view(-1, 1)
    return scores / temperature


def apply_top_k(scores: torch.Tensor, top_k: torch.Tensor | int, k_max: int | None = None) -> torch.Tensor:
    """Keep entries ≥ the k-th largest per row (ties survive, as HF's TopKLogitsWarper); −inf elsewhere.

    top_k: an int, or [B] ints per row; 0 disables top-k for that row. k_max: the
    largest per-row k when known on the host (saves a device sync / a full sort).
    """
    vocab = scores.shape[-1]
    if not isinstance(top_k, torch.Tensor):
        if top_k <= 0:
            return scores
        kth = torch.topk(scores, min(int(top_k), vocab), dim=-1).values[:, -1:]
        return scores.masked_fill(scores < kth, float("-inf"))
    k = top_k.to(device=scores.device, dtype=torch.long).clamp(max=vocab)
    if k_max is None:
        k_max = int(k.max()) if k.device.type == "cpu" else vocab  # no device sync on GPU
    k_max = max(1, min(int(k_max), vocab))
    values = torch.topk(scores, k_max, dim=-1).values  # [B, k_max], descending
    kth = values.gather(1, (k.clamp(min=1) - 1).view(-1, 1))
    kth = torch.where((k > 0).view(-1, 1), kth, torch.full_like(kth, float("-inf")))
    return scores.masked_fill(scores < kth, float("-inf"))


def sample_rows(scores: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One multinomial draw per row from softmax(scores) with that row's generator -> [B] int64."""
    probs = torch.softmax(scores, dim=-1)
    draws = [torch.multinomial(probs[b:b + 1], 1, generator=generators[b]) for b in range(scores.shape[0])]
    return torch.cat(draws, dim=0).view(-1)


def draw_rows(scores: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One draw per row from softmax(scores) `[G, n]` -> `[G]` column positions, by inverse CDF: one
    uniform u per row from that row's generator, then the first column whose cumulative probability
    exceeds u·total — the textbook inverse-CDF draw (the law of `torch.multinomial`, not its ids for a seed).

    Why not `sample_rows`: a multinomial draw with its own generator is ~3 kernel launches per row; at 64
    streams that is ~200 launches in every engine step on a GPU. Here the uniforms come from CPU
    generators (microseconds, no launch), and the device runs softmax, cumsum and searchsorted once
    for the block. Each row consumes one uniform whatever the block holds, so a request draws the same
    ids whoever shares its step.

    A Gumbel-max race (one uniform per candidate, argmax) would batch as well, but it needs ~50 uniforms
    per row and step instead of one, and how many depends on the ties the row keeps.
    """
    probs = torch.softmax(scores.float(), dim=-1)  # -inf (not kept) -> probability 0
    cdf = probs.cumsum(dim=-1)
    u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64, device=g.device).cpu() for g in generators])
    total = cdf[:, -1]  # 1 up to rounding
    # Kept strictly below the total (u * total may round up to it for u within 2^-24 of 1), so some column's
    # cdf exceeds it; right=True then finds the first such column, which has a nonzero probability (a
    # zero-probability column's cdf equals the one before it).
    target = torch.minimum(u.to(device=scores.device, dtype=torch.float32) * total, torch.nextafter(total, total * 0))
    return torch.searchsorted(cdf, target[:, None], right=True).view(-1)


class Sampler:
    """Batched next-token selection for rows with their own SamplingParams and generators."""

    def __init__(self, params: Sequence[SamplingParams], device: torch.device | str) -> None:
        if not params:
            raise InvalidInputError("params: expected at least one SamplingParams")
        windows = {(p.repetition_window, p.repetition_threshold) for p in params}
        if len(windows) != 1:
            raise InvalidInputError("params: rows of one batch must share repetition_window and repetition_threshold")
        window, threshold = windows.pop()
        self.params = list(params)
        self.device = torch.device(device)
        self.repetition = RepetitionAwareProcessor(window, threshold)
        self.generators = [p.make_generator(self.device) for p in self.params]
        self._greedy = torch.tensor([p.greedy for p in self.params], device=self.device)
        self._all_greedy = all(p.greedy for p in self.params)
        self._temperature = torch.tensor([float(p.temperature) for p in self.params], device=self.device)
        self._top_k = torch.tensor([p.top_k for p in self.params], device=self.device)
        self._k_max = max(p.top_k for p in self.params)

    def process(self, logits: torch.Tensor, recent: RecentIds) -> tuple[torch.Tensor, torch.Tensor]:
        """logits [B, V] -> (after the repetition processor, after temperature + top-k), both fp32."""
        scores = self.repetition.apply(recent.recent, recent.seen, logits.float())
        if self._all_greedy:
            return scores, scores
        warped = apply_top_k(apply_temperature(scores, self._temperature), self._top_k, self._k_max)
        # Greedy rows are not warped (HF applies warpers only when sampling).
        warped = torch.where(self._greedy[:, None], scores, warped)
        return scores, warped

    def select(self, scores: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        """Next ids [B]: argmax of `scores` for greedy rows, a multinomial draw from `warped` otherwise."""
        greedy_ids = scores.argmax(dim=-1)
        if self._all_greedy:
            return greedy_ids
        return torch.where(self._greedy, greedy_ids, sample_rows(warped, self.generators))
