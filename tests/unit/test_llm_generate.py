"""Generation: equals a naive upstream-style loop, batch rows equal their batch-1 runs, limits, errors.

The model runs in float64 here so that batch vs batch-1 (or chunked vs one-shot prefill)
differences, pure summation-order noise (~1e-15), cannot flip an argmax or a multinomial
draw: any mismatch is a logic error.
"""
from __future__ import annotations

import pytest
import torch

from editx.engine.generate import generate, generate_batch, required_capacity
from editx.engine.kv_cache import KVCache
from editx.engine.sampling import RepetitionAwareProcessor, SamplingParams, apply_top_k
from editx.errors import InvalidInputError
from editx.models.step1 import Step1Config, build_step1

from random_weights import init_step1_random_

VOCAB = 64  # small vocabulary: repetitions (and so bans) happen often


@pytest.fixture(scope="module")
def model():
    cfg = Step1Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_attention_groups=2, vocab_size=VOCAB)
    return init_step1_random_(build_step1(cfg, "cpu", torch.float32), seed=3).to(torch.float64)


def prompt(n: int, seed: int) -> list[int]:
    return torch.randint(5, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def naive_generate(model, ids: list[int], params: SamplingParams) -> list[int]:
    """Upstream's loop: full forward per step, processors on the whole history, HF order."""
    gen = params.make_generator("cpu")
    history, out = list(ids), []
    limit = params.new_token_limit(len(ids))
    with torch.no_grad():
        while True:
            logits = model.forward_reference(torch.tensor([history]))[:, -1].float()
            scores = RepetitionAwareProcessor(params.repetition_window)(torch.tensor([history]), logits)
            if params.greedy:
                token = int(scores.argmax(-1))
            else:
                warped = apply_top_k(scores / params.temperature, params.top_k)
                token = int(torch.multinomial(torch.softmax(warped, -1), 1, generator=gen))
            out.append(token)
            history.append(token)
            if token == params.stop_id or len(out) >= limit:
                return out


@pytest.mark.parametrize("params", [
    SamplingParams(greedy=True, max_new_tokens=25),
    SamplingParams(seed=7, max_new_tokens=25),
    SamplingParams(seed=8, temperature=1.3, top_k=5, max_new_tokens=25),
])
def test_matches_naive_upstream_loop(model, params):
    ids = prompt(13, 0)
    result = generate(model, ids, params)
    assert result.raw_ids == naive_generate(model, ids, params)
    assert result.ids == result.raw_ids[:-1]


def test_greedy_bans_show_up(model):
    """With a 64-token vocabulary greedy decoding repeats, so the processor must fire."""
    result = generate(model, prompt(11, 1), SamplingParams(greedy=True, max_new_tokens=40), record=True)
    assert torch.isneginf(result.step_scores).any()
    assert result.step_logits.shape == result.step_scores.shape == (len(result.raw_ids), VOCAB)
    assert torch.isfinite(result.step_logits).all()


def test_batch_rows_equal_batch_one(model):
    prompts = [prompt(n, 10 + n) for n in (9, 1, 23, 4)]
    params = [
        SamplingParams(greedy=True, max_new_tokens=17),
        SamplingParams(seed=1, max_new_tokens=30),
        SamplingParams(seed=2, top_k=3, temperature=0.9, max_new_tokens=6),
        SamplingParams(seed=3, max_length=20),
    ]
    solo = [generate(model, p, sp) for p, sp in zip(prompts, params)]
    # Make one row stop on its stop id mid-way (the id it generates at step 3).
    params[1] = SamplingParams(seed=1, max_new_tokens=30, stop_id=solo[1].raw_ids[3])
    solo[1] = generate(model, prompts[1], params[1])
    assert solo[1].stop_reason == "stop_id" and len(solo[1].raw_ids) <= 4
    batch = generate_batch(model, prompts, params, prefill_chunk=5)
    for one, many in zip(solo, batch):
        assert many.raw_ids == one.raw_ids and many.ids == one.ids and many.stop_reason == one.stop_reason


def test_chunked_prefill_equals_one_shot(model):
    ids = prompt(37, 4)
    params = SamplingParams(greedy=True, max_new_tokens=8)
    one = generate(model, ids, params, record=True)
    for chunk in (1, 5, 36):
        many = generate(model, ids, params, prefill_chunk=chunk, record=True)
        assert many.raw_ids == one.raw_ids
        torch.testing.assert_close(many.step_logits, one.step_logits, atol=1e-6, rtol=1e-6)


def test_max_length_counts_the_prompt_and_last_id_is_dropped(model):
    ids = prompt(10, 5)
    result = generate(model, ids, SamplingParams(seed=0, max_length=15))
    if result.stop_reason == "length":
        assert len(result.raw_ids) == 5
    assert len(result.raw_ids) <= 5 and result.ids == result.raw_ids[:-1]


def test_stop_on_stop_id(model):
    ids = prompt(8, 6)
    first = generate(model, ids, SamplingParams(greedy=True, max_new_tokens=12))
    stop = first.raw_ids[5]
    result = generate(model, ids, SamplingParams(greedy=True, max_new_tokens=12, stop_id=stop))
    k = first.raw_ids.index(stop)
    assert result.raw_ids == first.raw_ids[:k + 1] and result.stop_reason == "stop_id"
    assert result.ids == first.raw_ids[:k]


def test_streaming_callback_sees_exactly_the_kept_ids(model):
    seen: dict[int, list[int]] = {0: [], 1: []}
    prompts = [prompt(6, 7), prompt(12, 8)]
    results = generate_batch(model, prompts, SamplingParams(seed=5, max_new_tokens=9),
                             on_token=lambda row, tok: seen[row].append(tok))
    assert [seen[0], seen[1]] == [r.ids for r in results]
    single: list[int] = []
    one = generate(model, prompts[0], SamplingParams(seed=5, max_new_tokens=9), on_token=single.append)
    assert single == one.ids


def test_reuses_a_given_cache(model):
    ids = prompt(7, 9)
    params = SamplingParams(greedy=True, max_new_tokens=5)
    cache = KVCache.for_model(model, 1, 64)
    first = generate(model, ids, params, cache)
    again = generate(model, ids, params, cache)  # stale contents must not matter
    assert first.raw_ids == again.raw_ids
    assert int(cache.lengths[0]) == len(ids) + len(again.raw_ids) - 1


def test_required_capacity():
    assert required_capacity([10, 3], [5, 20]) == 23
    assert required_capacity([10], [1]) == 11


def test_errors(model):
    params = SamplingParams(greedy=True, max_new_tokens=4)
    with pytest.raises(InvalidInputError, match="empty"):
        generate(model, [], params)
    with pytest.raises(InvalidInputError, match="prompts\\[0\\]"):
        generate(model, [1, VOCAB], params)
    with pytest.raises(InvalidInputError, match="encode"):
        generate(model, "hello", params)
    with pytest.raises(InvalidInputError, match="max_length"):
        generate(model, [1] * 10, SamplingParams(max_length=10))
    with pytest.raises(InvalidInputError, match="cache"):
        generate(model, [1] * 10, params, KVCache.for_model(model, 1, 8))
    with pytest.raises(InvalidInputError, match="cache"):
        generate(model, [1] * 3, params, KVCache.for_model(model, 2, 64))
    with pytest.raises(InvalidInputError, match="params"):
        generate_batch(model, [[1], [2]], [params])
    with pytest.raises(InvalidInputError, match="prompts"):
        generate_batch(model, [], params)
    with pytest.raises(InvalidInputError, match="prefill_chunk"):
        generate(model, [1, 2], params, prefill_chunk=0)
