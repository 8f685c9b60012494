"""Step1 over the paged KV pool (continuous batching path) vs the upstream-equivalent reference forward."""
from __future__ import annotations

import random

import pytest
import torch

from editx.engine.paged_kv import PagedBatch, PagedKVCache, SequenceChunk
from editx.loading.random_init import randomize_
from editx.models.step1 import Step1Config, build_step1

CFG = Step1Config(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6,
                  num_attention_groups=2, vocab_size=300)
# fp32: paged vs reference differ only in summation order (gathered keys, same SDPA math):
# observed ~1e-6 on O(1) logits; 1e-4 leaves margin yet catches any mis-indexed key (O(0.1) effects).
ATOL = 1e-4


@pytest.fixture(scope="module")
def model():
    return randomize_(build_step1(CFG, "cpu", torch.float32), seed=3, depth=2)


def _blocks(rng: random.Random, pool: list[int], n_tokens: int, block_size: int) -> list[int]:
    need = -(-n_tokens // block_size)
    return [pool.pop(rng.randrange(len(pool))) for _ in range(need)]


@pytest.mark.parametrize("block_size", [3, 16])
def test_chunked_prefill_then_mixed_decode_matches_reference(model, block_size):
    rng = random.Random(block_size)
    lengths = [1, 7, 23, 40]                      # ragged prompts; block sizes that do not divide them
    prompts = [[rng.randrange(5, 300) for _ in range(n)] for n in lengths]
    extra = 5                                      # decode steps after the prompt
    cache = PagedKVCache.for_model(model, num_blocks=64, block_size=block_size)
    pool = list(range(64))
    tables = [_blocks(rng, pool, n + extra, block_size) for n in lengths]
    done = [0] * len(prompts)
    seqs = [list(p) for p in prompts]
    with torch.no_grad():
        # prefill in chunks of at most 9 tokens, all sequences packed into each step
        while any(d < len(p) for d, p in zip(done, prompts)):
            chunks, who = [], []
            for i, p in enumerate(prompts):
                if done[i] < len(p):
                    n = min(9, len(p) - done[i])
                    chunks.append(SequenceChunk(p[done[i]:done[i] + n], done[i], tables[i]))
                    who.append(i)
                    done[i] += n
            logits = model.forward_paged(PagedBatch.build(chunks, block_size, "cpu"), cache)
            for row, i in enumerate(who):
                if done[i] == len(prompts[i]):
                    ref = model.forward_reference(torch.tensor([prompts[i]]))[0, -1]
                    torch.testing.assert_close(logits[row], ref, atol=ATOL, rtol=0)
        # decode: every sequence one token per step
        for _ in range(extra):
            nxt = [rng.randrange(5, 300) for _ in seqs]
            chunks = [SequenceChunk([t], len(s), tab) for t, s, tab in zip(nxt, seqs, tables)]
            logits = model.forward_paged(PagedBatch.build(chunks, block_size, "cpu"), cache)
            for i, t in enumerate(nxt):
                seqs[i].append(t)
                ref = model.forward_reference(torch.tensor([seqs[i]]))[0, -1]
                torch.testing.assert_close(logits[i], ref, atol=ATOL, rtol=0)


def test_shared_prefix_blocks_are_read_not_rewritten(model):
    """Two sequences whose first full block is the same physical block (prefix sharing)."""
    bs = 4
    cache = PagedKVCache.for_model(model, num_blocks=8, block_size=bs)
    prefix, a_tail, b_tail = [11, 12, 13, 14], [20, 21, 22], [30, 31]
    with torch.no_grad():
        model.forward_paged(PagedBatch.build([SequenceChunk(prefix + a_tail, 0, [0, 1])], bs, "cpu"), cache)
        # sequence b reuses block 0 (the cached prefix) and prefills only its tail
        logits = model.forward_paged(PagedBatch.build([SequenceChunk(b_tail, 4, [0, 2])], bs, "cpu"), cache)
        ref = model.forward_reference(torch.tensor([prefix + b_tail]))[0, -1]
    torch.testing.assert_close(logits[0], ref, atol=ATOL, rtol=0)


def test_copy_blocks(model):
    cache = PagedKVCache.for_model(model, num_blocks=4, block_size=2)
    cache.k[:, 1] = 1.0
    cache.copy_blocks([(1, 3)])
    assert torch.equal(cache.k[:, 3], cache.k[:, 1])


def test_logits_for_allowed_ranges_equal_the_full_head_on_those_ids(model):
    """The engine's audio-only LM head: only the ids a logit bias allows are computed."""
    from editx.engine.generate import audio_logit_bias
    from editx.engine.sampling import allowed_ranges

    vocab = model.config.vocab_size
    first, count = vocab // 2 + 1, vocab // 3  # odd offsets: not a power-of-two slice
    bias = audio_logit_bias(vocab, 3, first_audio_id=first, num_audio_ids=count)
    ranges = allowed_ranges(bias)
    assert ranges == [(3, 4), (first, first + count)]
    hidden = torch.randn(5, model.config.hidden_size, generator=torch.Generator().manual_seed(0)).to(model.dtype)
    got = model.logits_for_ranges(hidden, ranges)  # [S, n]: the allowed ids' columns, ascending
    full = model.lm_head(hidden)
    allowed = torch.isfinite(bias)
    # fp32: same dot products, possibly another GEMM blocking for the smaller row count
    torch.testing.assert_close(got, full[:, allowed], rtol=1e-5, atol=1e-5)
    assert allowed_ranges(torch.zeros(vocab)) == [(0, vocab)]
    many = torch.full((40,), float("-inf"))
    many[::2] = 0.0  # 20 runs: not worth ranges
    assert allowed_ranges(many) is None and allowed_ranges(torch.full((9,), float("-inf"))) is None
