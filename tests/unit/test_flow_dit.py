"""DiT estimator: batching, the streaming chunk path vs a block-causal full pass, bf16."""
from __future__ import annotations

import pytest
import torch

from random_weights import fill_random_

from editx.models.flow import DiT, DiTConfig, block_causal_mask

CFG = DiTConfig(hidden_size=32, depth=2, num_heads=2, head_dim=16, mlp_ratio=2.0)


def make_dit(seed: int = 0) -> DiT:
    """Random weights with realistic scale (adaLN not zeroed, unlike a fresh upstream init)."""
    return fill_random_(DiT(CFG), seed)


def inputs(batch: int, frames: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x, mu, cond = (torch.randn(batch, 80, frames, generator=g) for _ in range(3))
    return dict(x=x, mu=mu, t=torch.rand(batch, generator=g), spks=torch.randn(batch, 80, generator=g), cond=cond)


def test_batch_of_two_equals_two_single_calls():
    dit = make_dit()
    a = inputs(2, 23)
    mask = torch.ones(2, 1, 23)
    with torch.no_grad():
        both = dit(a["x"], mask, a["mu"], a["t"], a["spks"], a["cond"])
        singles = [dit(a["x"][i:i + 1], mask[i:i + 1], a["mu"][i:i + 1], a["t"][i:i + 1], a["spks"][i:i + 1],
                       a["cond"][i:i + 1]) for i in range(2)]
    torch.testing.assert_close(both, torch.cat(singles), atol=1e-5, rtol=0)


def test_all_ones_mask_equals_no_mask():
    dit = make_dit(1)
    a = inputs(2, 17)
    with torch.no_grad():
        masked = dit(a["x"], torch.ones(2, 1, 17), a["mu"], a["t"], a["spks"], a["cond"])
        unmasked = dit(a["x"], None, a["mu"], a["t"], a["spks"], a["cond"])
    torch.testing.assert_close(masked, unmasked, atol=1e-5, rtol=0)


@pytest.mark.parametrize("sizes", [[12, 5, 7], [3, 1, 2, 9], [20]])
def test_forward_chunk_equals_block_causal_full_pass(sizes):
    """Cached chunks see themselves + everything before: the same as a block-causal mask."""
    dit = make_dit(len(sizes))
    total = sum(sizes)
    a = inputs(2, total, seed=total)
    mask = block_causal_mask(sizes).expand(2, total, total)
    with torch.no_grad():
        ref = dit(a["x"], mask, a["mu"], a["t"], a["spks"], a["cond"])
        outs, cache, start = [], None, 0
        for size in sizes:
            part = {k: (v[:, :, start:start + size] if v.dim() == 3 else v) for k, v in a.items()}
            out, new_cache = dit.forward_chunk(part["x"], part["mu"], part["t"], part["spks"], part["cond"], cache)
            if cache is not None:  # new frames are prepended, the old cache follows unchanged
                assert torch.equal(new_cache.k[:, :, :, size:], cache.k)
                assert torch.equal(new_cache.v[:, :, :, size:], cache.v)
            outs.append(out)
            cache, start = new_cache, start + size
    assert cache.frames == total
    assert cache.conv.shape == (CFG.depth, 2, 2, CFG.hidden_size, 2)
    torch.testing.assert_close(torch.cat(outs, dim=2), ref, atol=2e-5, rtol=0)


def test_bfloat16_is_finite_and_close_to_float32():
    dit = make_dit(5)
    a = inputs(2, 40)
    with torch.no_grad():
        ref = dit(a["x"], None, a["mu"], a["t"], a["spks"], a["cond"])
        low = dit.to(torch.bfloat16)(a["x"], None, a["mu"], a["t"], a["spks"], a["cond"])
    assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
    # bf16 keeps 8 significant bits (unit roundoff 2^-9 ≈ 2e-3); weights, activations and
    # each of ~15 matmul/norm stages round at that level, so the relative RMS error is
    # expected around 1e-2. 5e-2 leaves margin while still catching a real bug (a wrong
    # branch or dtype path gives O(1) relative error).
    rel = (low.float() - ref).norm() / ref.norm()
    assert rel < 5e-2, float(rel)
