"""Sampling: repetition processor (full-history vs windowed form), temperature, HF top-k, draws."""
from __future__ import annotations

import pytest
import torch

from editx.engine.sampling import (
    RecentIds,
    RepetitionAwareProcessor,
    Sampler,
    SamplingParams,
    apply_temperature,
    apply_top_k,
    sample_rows,
)
from editx.errors import InvalidInputError

NEG_INF = float("-inf")


# -- repetition ------------------------------------------------------------------------------
def test_short_history_is_a_noop():
    scores = torch.randn(1, 8)
    got = RepetitionAwareProcessor()(torch.tensor([[5] * 9]), scores)
    assert torch.equal(got, scores)


@pytest.mark.parametrize("history,banned", [
    ([1, 2, 3, 4, 6, 6, 7, 0, 1, 5], False),  # last id once in the window
    ([1, 2, 3, 5, 4, 6, 7, 0, 1, 5], True),   # twice
    ([5, 5, 5, 5, 5, 5, 5, 5, 5, 5], True),
    ([5, 1, 2, 3, 4, 6, 7, 0, 1, 2, 3, 5], False),  # the earlier 5 fell out of the window
])
def test_ban_rule(history, banned):
    scores = torch.arange(8, dtype=torch.float32)[None]
    got = RepetitionAwareProcessor()(torch.tensor([history]), scores)
    last = history[-1]
    assert torch.isneginf(got[0, last]).item() is banned
    keep = torch.ones(8, dtype=torch.bool)
    keep[last] = False
    assert torch.equal(got[0, keep], scores[0, keep])


def test_processor_does_not_modify_its_input():
    scores = torch.zeros(1, 8)
    RepetitionAwareProcessor()(torch.tensor([[3] * 10]), scores)
    assert torch.isfinite(scores).all()


def test_window_form_equals_full_history_form():
    gen = torch.Generator().manual_seed(0)
    proc = RepetitionAwareProcessor()
    histories = [torch.randint(0, 4, (n,), generator=gen).tolist() for n in (1, 5, 9, 10, 11, 30)]
    scores = torch.randn(len(histories), 6, generator=gen)
    recent = RecentIds(histories, 10, "cpu")
    got = proc.apply(recent.recent, recent.seen, scores)
    for b, history in enumerate(histories):
        want = proc(torch.tensor([history]), scores[b:b + 1])
        assert torch.equal(got[b:b + 1], want), history


def test_recent_ids_push_respects_active_rows():
    recent = RecentIds([[1, 2], [3] * 12], 10, "cpu")
    recent.push(torch.tensor([7, 8]), torch.tensor([True, False]))
    assert recent.recent[0, -3:].tolist() == [1, 2, 7] and recent.seen.tolist() == [3, 12]
    assert recent.recent[1].tolist() == [3] * 10


# -- warpers -----------------------------------------------------------------------------------
def test_top_k_keeps_ties_like_hf():
    scores = torch.tensor([[5.0, 4.0, 4.0, 4.0, 1.0, 0.0]])
    got = apply_top_k(scores, 2)
    assert torch.equal(got, torch.tensor([[5.0, 4.0, 4.0, 4.0, NEG_INF, NEG_INF]]))


def test_top_k_zero_disables_and_large_k_is_clamped():
    scores = torch.randn(2, 5)
    assert torch.equal(apply_top_k(scores, 0), scores)
    assert torch.equal(apply_top_k(scores, 50), scores)


def test_per_row_top_k_equals_scalar_calls():
    scores = torch.randn(4, 40, generator=torch.Generator().manual_seed(1))
    ks = [0, 1, 7, 50]
    got = apply_top_k(scores, torch.tensor(ks))
    for b, k in enumerate(ks):
        assert torch.equal(got[b], apply_top_k(scores[b:b + 1], k)[0])
    assert torch.equal(apply_top_k(scores, torch.tensor(ks), k_max=max(ks)), got)  # host-known k_max


def test_temperature_per_row():
    scores = torch.ones(2, 3)
    got = apply_temperature(scores, torch.tensor([0.5, 2.0]))
    assert torch.equal(got, torch.tensor([[2.0] * 3, [0.5] * 3]))
    assert torch.equal(apply_temperature(scores, 0.5), scores / 0.5)


# -- draws ----------------------------------------------------------------------------------------
def test_seeded_draws_are_reproducible_and_per_row():
    scores = torch.randn(3, 50, generator=torch.Generator().manual_seed(2))
    params = [SamplingParams(seed=s) for s in (11, 12, 11)]
    first = [sample_rows(scores, [p.make_generator("cpu") for p in params]) for _ in range(2)]
    assert torch.equal(first[0], first[1])
    solo = sample_rows(scores[1:2], [params[1].make_generator("cpu")])
    assert first[0][1] == solo[0]


def test_sampler_respects_top_k_and_bans():
    torch.manual_seed(0)
    logits = torch.randn(2, 100)
    logits[:, 7] = 50.0  # would always win ...
    sampler = Sampler([SamplingParams(seed=3, top_k=5), SamplingParams(seed=4, greedy=True)], "cpu")
    recent = RecentIds([[7, 7] * 5, [7, 7] * 5], 10, "cpu")  # ... but 7 is banned (10 times in 10)
    allowed = set(torch.topk(logits[0].masked_fill(torch.arange(100) == 7, NEG_INF), 5).indices.tolist())
    for _ in range(50):
        scores, warped = sampler.process(logits, recent)
        picked = sampler.select(scores, warped)
        assert picked[0].item() in allowed
        assert picked[1].item() == int(scores[1].argmax())
    assert torch.equal(warped[1], scores[1])  # greedy rows are not warped


def test_sampler_matches_hf_pipeline_order():
    """repetition -> temperature -> top-k, on fp32 scores."""
    logits = torch.randn(1, 64, generator=torch.Generator().manual_seed(5))
    history = [[3] * 10]
    p = SamplingParams(temperature=0.7, top_k=10)
    _, warped = Sampler([p], "cpu").process(logits.to(torch.bfloat16), RecentIds(history, 10, "cpu"))
    banned = RepetitionAwareProcessor()(torch.tensor(history), logits.to(torch.bfloat16).float())
    assert torch.equal(warped, apply_top_k(banned / 0.7, 10))


# -- params -------------------------------------------------------------------------------------
def test_defaults_are_upstreams():
    p = SamplingParams()
    assert (p.temperature, p.top_k, p.repetition_window, p.greedy, p.stop_id, p.max_length) == (0.7, 50, 10, False, 3, 8192)
    assert p.new_token_limit(100) == 8092
    assert SamplingParams(max_new_tokens=5).new_token_limit(100) == 5


@pytest.mark.parametrize("bad", [
    dict(temperature=0), dict(temperature=-1.0), dict(temperature=float("nan")), dict(top_k=-1),
    dict(top_k=2.5), dict(repetition_window=0), dict(repetition_threshold=1.0), dict(greedy=1),
    dict(seed=-3), dict(max_new_tokens=0), dict(max_length=1), dict(stop_id=-1),
])
def test_params_validation(bad):
    with pytest.raises(InvalidInputError, match=list(bad)[0]):
        SamplingParams(**bad)


def test_rows_must_share_the_repetition_window():
    with pytest.raises(InvalidInputError, match="repetition_window"):
        Sampler([SamplingParams(), SamplingParams(repetition_window=5)], "cpu")
