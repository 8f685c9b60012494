"""Autoregressive generation with the Step1 LLM, equivalent to upstream's `llm.generate(...)`.

Upstream (spec §4.5/§4.6): one prompt, prefill, then one token per step through the
processors in `sampling.py`; stop on id 3 or when prompt + generated reaches
max_length (8192); the caller then keeps `output[len(prompt):-1]` — the last generated
id is always dropped (the stop id, or a real token when the length limit hit).

Here: a static KV cache, chunked prefill (bounded bias/activation memory), and batches
of prompts with different lengths. Batch layout: rows are **right-padded** — every row
starts at position 0, so a row's ALiBi distances are exactly its batch-1 distances; pad
slots past a row's length are overwritten by its own generated tokens before any query
can see them (keys after a query's position are masked). Rows stop independently; a
finished row keeps being fed (its outputs ignored) at a frozen position, so every step
has the same shapes. Each row's result equals its batch-1 run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..errors import InvalidInputError
from .kv_cache import KVCache
from .model_runner import eager_decode_step
from .sampling import RecentIds, Sampler, SamplingParams

TokenCallback = Callable[[int, int], None]  # (row, token id)


@dataclass
class GenerationResult:
    """The outcome of one row.

    ids: upstream's output — the generated ids without the last one (what the decoder gets).
    raw_ids: every generated id (ends with the stop id when generation stopped on it).
    stop_reason: "stop_id" or "length" (max_length / max_new_tokens reached).
    step_logits / step_scores: [N, V] fp32 raw last-position logits and the scores after
    the repetition processor, per step (only with record=True).
    """

    ids: list[int]
    raw_ids: list[int]
    stop_reason: str
    prompt_len: int
    step_logits: torch.Tensor | None = field(default=None, repr=False)
    step_scores: torch.Tensor | None = field(default=None, repr=False)


def generate(
    model,
    prompt_ids: Sequence[int] | torch.Tensor,
    params: SamplingParams | None = None,
    cache: KVCache | None = None,
    *,
    on_token: Callable[[int], None] | None = None,
    prefill_chunk: int = 512,
    attend_bucket: int = 256,
    record: bool = False,
    logit_bias: torch.Tensor | None = None,
    decode_step=None,
) -> GenerationResult:
    """Generate for one prompt (see `generate_batch`). `on_token(token)` gets each kept id."""
    callback = None if on_token is None else (lambda _row, token: on_token(token))
    return generate_batch(model, [prompt_ids], params, cache, on_token=callback, prefill_chunk=prefill_chunk,
                          attend_bucket=attend_bucket, record=record, logit_bias=logit_bias,
                          decode_step=decode_step)[0]


def generate_batch(
    model,
    prompts: Sequence[Sequence[int] | torch.Tensor],
    params: SamplingParams | Sequence[SamplingParams] | None = None,
    cache: KVCache | None = None,
    *,
    on_token: TokenCallback | None = None,
    prefill_chunk: int = 512,
    attend_bucket: int = 256,
    record: bool = False,
    logit_bias: torch.Tensor | None = None,
    decode_step=None,
) -> list[GenerationResult]:
    """Generate for B prompts of any lengths; returns one GenerationResult per prompt.

    params: one SamplingParams for all rows or one per row (rows must share the
        repetition window); defaults to upstream's sampling setup.
    cache: a KVCache with B rows and enough capacity (allocated when None; see
        `required_capacity`).
    on_token(row, token): streaming hook, called for each id of `result.ids` as soon as
        it is known to be kept — i.e. when the next id arrives (the last generated id is
        never kept, as upstream drops it).
    prefill_chunk: prompt positions per prefill call; attend_bucket: decode steps attend
        over the first multiple-of-`attend_bucket` cache slots that covers every position
        (a few static shapes instead of one per step).
    """
    rows = [_prompt_list(p, i, model.config.vocab_size) for i, p in enumerate(prompts)]
    if not rows:
        raise InvalidInputError("prompts: expected at least one prompt")
    row_params = _per_row_params(params, len(rows))
    for name, value in (("prefill_chunk", prefill_chunk), ("attend_bucket", attend_bucket)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InvalidInputError(f"{name}: expected a positive int, got {value!r}")
    lengths = [len(r) for r in rows]
    limits = []
    for i, (n, p) in enumerate(zip(lengths, row_params)):
        limit = p.new_token_limit(n)
        if limit < 1:
            raise InvalidInputError(f"prompts[{i}]: {n} ids leave no room to generate under max_length {p.max_length}")
        limits.append(limit)
    need = required_capacity(lengths, limits)
    if cache is None:
        cache = KVCache.for_model(model, len(rows), need)
    elif cache.batch != len(rows) or cache.capacity < need:
        raise InvalidInputError(
            f"cache: has {cache.batch} rows x {cache.capacity} slots, this batch needs {len(rows)} x {need}"
        )
    with torch.inference_mode():
        if logit_bias is not None:
            if logit_bias.shape != (model.config.vocab_size,):
                raise InvalidInputError(f"logit_bias: expected shape [{model.config.vocab_size}], "
                                        f"got {tuple(logit_bias.shape)}")
            logit_bias = logit_bias.to(device=model.device, dtype=torch.float32)
        step = decode_step or eager_decode_step(model)
        return _run(model, rows, row_params, limits, cache, on_token, prefill_chunk, attend_bucket, record,
                    logit_bias, step)


def required_capacity(prompt_lengths: Sequence[int], new_token_limits: Sequence[int]) -> int:
    """Cache slots a batch needs: every prompt slot, every fed-back generated id, and one
    spare slot where a finished row is parked."""
    return max(max(prompt_lengths), max(n + k for n, k in zip(prompt_lengths, new_token_limits)))


# ---------------------------------------------------------------------------------------
class _Rows:
    """Host-side bookkeeping of a batch: generated ids, stop reasons, optional traces."""

    def __init__(self, limits: list[int], stop_ids: list[int], record: bool, on_token: TokenCallback | None):
        self.limits, self.stop_ids, self.record, self.on_token = limits, stop_ids, record, on_token
        self.raw: list[list[int]] = [[] for _ in limits]
        self.reasons: list[str | None] = [None] * len(limits)
        self.logits: list[list[torch.Tensor]] = [[] for _ in limits]
        self.scores: list[list[torch.Tensor]] = [[] for _ in limits]

    def active(self) -> list[bool]:
        return [reason is None for reason in self.reasons]

    def done(self) -> bool:
        return all(reason is not None for reason in self.reasons)

    def take(self, tokens: list[int], logits: torch.Tensor, scores: torch.Tensor) -> list[bool]:
        """Append this step's id to every active row; returns which rows were active."""
        active = self.active()
        for b, token in enumerate(tokens):
            if not active[b]:
                continue
            if self.record:
                self.logits[b].append(logits[b].cpu())
                self.scores[b].append(scores[b].cpu())
            if self.on_token is not None and self.raw[b]:
                self.on_token(b, self.raw[b][-1])  # the previous id is now known to be kept
            self.raw[b].append(token)
            if token == self.stop_ids[b]:
                self.reasons[b] = "stop_id"
            elif len(self.raw[b]) >= self.limits[b]:
                self.reasons[b] = "length"
        return active

    def results(self, lengths: list[int]) -> list[GenerationResult]:
        return [
            GenerationResult(
                ids=r[:-1], raw_ids=r, stop_reason=reason, prompt_len=n,
                step_logits=torch.stack(lg) if self.record else None,
                step_scores=torch.stack(sc) if self.record else None,
            )
            for r, reason, n, lg, sc in zip(self.raw, self.reasons, lengths, self.logits, self.scores)
        ]


def _run(model, rows, row_params, limits, cache, on_token, prefill_chunk, attend_bucket, record, logit_bias,
         decode_step):
    device, batch = model.device, len(rows)
    lengths = [len(r) for r in rows]
    logits = prefill(model, rows, cache, prefill_chunk)  # [B, V] fp32
    recent = RecentIds(rows, row_params[0].repetition_window, device)
    sampler = Sampler(row_params, device)
    state = _Rows(limits, [p.stop_id for p in row_params], record, on_token)
    positions = torch.tensor(lengths, dtype=torch.long, device=device)  # where each row's next id goes
    step = 0
    while True:
        if logit_bias is not None:
            logits = logits + logit_bias
        scores, warped = sampler.process(logits, recent)
        next_ids = sampler.select(scores, warped)  # [B]
        active = state.take(next_ids.tolist(), logits, scores)  # .tolist(): the one host sync per step
        if state.done():
            break
        recent.push(next_ids, torch.tensor(active, device=device))
        still = torch.tensor(state.active(), device=device)
        # Static attention width: the bucket covering every position written so far.
        key_len = min(cache.capacity, _round_up(max(lengths) + step + 1, attend_bucket))
        logits = decode_step(next_ids.view(batch, 1), cache, positions, key_len)
        positions = positions + still.long()  # finished rows stay parked on their slot
        step += 1
    fed = [n + len(r) - 1 for n, r in zip(lengths, state.raw)]  # prompt + fed-back ids per row
    cache.lengths.copy_(torch.tensor(fed, device=cache.lengths.device))
    return state.results(lengths)


def prefill(model, rows: list[list[int]], cache: KVCache, chunk: int) -> torch.Tensor:
    """Run every prompt through the model in chunks; returns each row's last-prompt-id logits [B, V] fp32."""
    device, batch = model.device, len(rows)
    lengths = torch.tensor([len(r) for r in rows], device=device)
    longest = int(max(len(r) for r in rows))
    pad = model.config.pad_token_id
    ids = torch.tensor([r + [pad] * (longest - len(r)) for r in rows], dtype=torch.long, device=device)
    last = torch.empty(batch, model.config.vocab_size, dtype=torch.float32, device=device)
    for start in range(0, longest, chunk):
        end = min(longest, start + chunk)
        pick = (lengths - 1 - start).clamp(0, end - start - 1)  # each row's last id, if in this chunk
        positions = torch.full((batch,), start, dtype=torch.long, device=device)
        out = model(ids[:, start:end], cache, positions, attend_len=end, logits_at=pick).float()
        here = (lengths - 1 >= start) & (lengths - 1 < end)
        last = torch.where(here[:, None], out, last)
    return last


def audio_logit_bias(vocab_size: int, stop_id: int, device: torch.device | str = "cpu",
                     first_audio_id: int = 65536, num_audio_ids: int = 5120) -> torch.Tensor:
    """[V] fp32: 0 on the codec's audio ids and the stop id, -inf elsewhere.

    Upstream samples over the whole vocabulary (spec §4.6); a text id there would crash its
    decoder. Masking keeps every output decodable and changes nothing while the model
    already emits audio ids.
    """
    bias = torch.full((vocab_size,), float("-inf"), dtype=torch.float32, device=device)
    bias[first_audio_id:first_audio_id + num_audio_ids] = 0.0
    bias[stop_id] = 0.0
    return bias


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _prompt_list(prompt, index: int, vocab_size: int) -> list[int]:
    if isinstance(prompt, torch.Tensor):
        if prompt.dim() == 2 and prompt.shape[0] == 1:
            prompt = prompt[0]
        if prompt.dim() != 1 or prompt.is_floating_point():
            raise InvalidInputError(f"prompts[{index}]: expected 1-D integer ids, got {tuple(prompt.shape)} {prompt.dtype}")
        ids = prompt.tolist()
    elif isinstance(prompt, (str, bytes)):
        raise InvalidInputError(f"prompts[{index}]: expected token ids, got {type(prompt).__name__} (encode it first)")
    else:
        try:
            ids = [int(i) for i in prompt]
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"prompts[{index}]: expected a sequence of token ids ({exc})") from exc
    if not ids:
        raise InvalidInputError(f"prompts[{index}]: the prompt is empty")
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise InvalidInputError(f"prompts[{index}]: token ids must lie in [0, {vocab_size}), got {bad[:5]}")
    return ids


def _per_row_params(params, batch: int) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams() for _ in range(batch)]
    if isinstance(params, SamplingParams):
        return [params] * batch
    row_params = list(params)
    if len(row_params) != batch or not all(isinstance(p, SamplingParams) for p in row_params):
        raise InvalidInputError(f"params: expected one SamplingParams or {batch} of them")
    return row_params
