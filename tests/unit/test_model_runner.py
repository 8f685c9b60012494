"""The static-buffer decode runner (the CUDA-graph path's logic, run eagerly on CPU) vs plain decode."""
from __future__ import annotations

import pytest
import torch

from editx.engine.generate import generate
from editx.engine.model_runner import GraphedDecoder
from editx.engine.sampling import SamplingParams
from editx.loading.random_init import randomize_
from editx.models.step1 import Step1Config, build_step1

CFG = Step1Config(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6,
                  num_attention_groups=2, vocab_size=300)


@pytest.fixture(scope="module")
def model():
    return randomize_(build_step1(CFG, "cpu", torch.float32), seed=7, depth=2)


@pytest.mark.parametrize("greedy", [True, False])
def test_runner_matches_plain_generation_across_requests(model, greedy):
    runner = GraphedDecoder(model, batch=1, capacity=200, use_graphs=False)
    # attend_bucket 16 with prompts of 7 and 23 ids crosses several attention-width buckets
    for prompt, seed in (([5, 9, 11, 2, 7, 7, 1], 3), (list(range(40, 63)), 4)):
        params = SamplingParams(greedy=greedy, seed=seed, max_new_tokens=37, stop_id=299)
        plain = generate(model, prompt, params, attend_bucket=16)
        fast = generate(model, prompt, params, cache=runner.cache, decode_step=runner.step, attend_bucket=16)
        assert fast.raw_ids == plain.raw_ids


def test_runner_refuses_a_foreign_cache(model):
    runner = GraphedDecoder(model, batch=1, capacity=64, use_graphs=False)
    other = GraphedDecoder(model, batch=1, capacity=64, use_graphs=False)
    with pytest.raises(ValueError, match="own cache"):
        generate(model, [1, 2, 3], SamplingParams(greedy=True, max_new_tokens=3), cache=other.cache,
                 decode_step=runner.step)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_decode_matches_eager():
    model = randomize_(build_step1(CFG, "cuda", torch.float32), seed=7, depth=2)
    runner = GraphedDecoder(model, batch=1, capacity=256)
    params = SamplingParams(greedy=True, max_new_tokens=60, stop_id=299)
    plain = generate(model, list(range(3, 30)), params, attend_bucket=32)
    fast = generate(model, list(range(3, 30)), params, cache=runner.cache, decode_step=runner.step, attend_bucket=32)
    assert fast.raw_ids == plain.raw_ids
    assert len(runner.captured_buckets) >= 2
