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


@pytest.mark.parametrize("block_size", [1, 3, 16])
@pytest.mark.parametrize("n, bucket", [(1, 1), (3, 4), (7, 8), (13, 16)])
def test_decode_buffers_from_the_plans_arrays_equal_the_per_row_fill(n, bucket, block_size):
    """`_PagedStatic.load_arrays` (the engine's decode steps: CSR block tables straight from the plan)
    fills the same buffers as `load` from one SequenceChunk per row, padding rows included."""
    import numpy as np

    from editx.engine.model_runner import _PagedStatic
    from editx.engine.paged_kv import SequenceChunk

    rng = np.random.default_rng(n * 100 + block_size)
    max_blocks, scratch = 9, 500
    lengths = rng.integers(1, max_blocks + 1, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    table_ids = rng.permutation(scratch)[:offsets[-1]].astype(np.int32)
    positions = np.array([rng.integers((l - 1) * block_size, l * block_size) for l in lengths], np.int64)
    tokens = rng.integers(0, 1000, n).tolist()
    chunks = [SequenceChunk([tokens[i]], int(positions[i]), table_ids[offsets[i]:offsets[i + 1]].tolist())
              for i in range(n)]
    by_rows, by_arrays = (_PagedStatic(bucket, max_blocks, torch.device("cpu")) for _ in range(2))
    by_rows.load(chunks, block_size, scratch)
    by_arrays.load_arrays(tokens, positions, offsets, table_ids, block_size, scratch)
    for name in ("input_ids", "positions", "slot_mapping", "block_tables", "seq_lens"):
        assert torch.equal(getattr(by_arrays.batch, name), getattr(by_rows.batch, name)), name
    too_long = np.array([0, max_blocks + 1], np.int32)
    with pytest.raises(ValueError, match="blocks"):
        by_arrays.load_arrays([1], np.array([0]), too_long, np.arange(max_blocks + 1, dtype=np.int32), block_size, scratch)
