"""DiT attention kernel (q/k LayerNorm + flash attention, masks, CFG batch, streaming cache) vs torch."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from editx.errors import BackendUnavailableError, InvalidInputError
from editx.kernels import dit_attention as K
from editx.layers import kernel_backend
from editx.layers.attention import dit_attention as dit_attention_layer
from editx.loading.random_init import randomize_
from editx.models.flow import DiT, DiTConfig
from kernel_testing import DEVICE, DTYPES, big, check_error_budget, max_err, needs_kernels, randn

pytestmark = needs_kernels
HEADS, DIM = big(2, 8), 64  # the real DiT has 8 heads of 64
# fp32 on both sides differs only in summation order (online softmax vs one softmax):
# observed ~1e-6 on O(1) outputs; 2e-5 leaves margin and still catches a wrong key or mask (O(0.1)).
FP32_ATOL = 2e-5


def _norm(gen: torch.Generator, dtype) -> tuple:
    w = (1 + 0.1 * torch.randn(DIM, generator=gen)).to(DEVICE, dtype)
    b = (0.1 * torch.randn(DIM, generator=gen)).to(DEVICE, dtype)
    return w, b, 1e-5


def _inputs(batch: int, steps: int, dtype, seed: int, cache: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (randn(batch, steps, HEADS, DIM, dtype=dtype, generator=gen, scale=2.0) for _ in range(3))
    kc = vc = None
    if cache:
        kc = randn(batch, HEADS, cache, DIM, dtype=dtype, generator=gen)
        vc = randn(batch, HEADS, cache, DIM, dtype=dtype, generator=gen)
    return q, k, v, _norm(gen, dtype), _norm(gen, dtype), kc, vc


def _truth(q, k, v, qn, kn, key_mask, kc, vc):
    """fp64 on the CPU from the same (low-precision) inputs: the exact value of the op."""
    d64 = lambda t: None if t is None else t.double().cpu()  # noqa: E731
    qn64 = (d64(qn[0]), d64(qn[1]), qn[2])
    kn64 = (d64(kn[0]), d64(kn[1]), kn[2])
    mask = None if key_mask is None else key_mask.cpu()
    return K.dit_attention_ref(d64(q), d64(k), d64(v), qn64, kn64, mask, d64(kc), d64(vc))


def _padding(batch: int, steps: int) -> torch.Tensor:
    """Ragged batch: row b keeps its first steps − 2b frames (at least one)."""
    lens = torch.tensor([max(1, steps - 2 * b) for b in range(batch)])
    return (torch.arange(steps)[None] < lens[:, None]).to(DEVICE)


@pytest.mark.parametrize("steps", [1, 3, 7, 111, big(300, 1500)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_offline_with_padding_within_error_budget(dtype, steps):
    """CFG-sized batch (2 rows, ragged padding) in one launch; bf16/fp16 under the error-budget rule."""
    q, k, v, qn, kn, _, _ = _inputs(2, steps, dtype, seed=steps)
    mask = _padding(2, steps)
    keys = torch.empty(2, HEADS, steps, DIM, dtype=dtype, device=DEVICE)
    out = K.dit_attention(q, k, v, qn, kn, mask, k_out=keys)
    ref, ref_keys, _ = K.dit_attention_ref(q, k, v, qn, kn, mask)
    truth, truth_keys, _ = _truth(q, k, v, qn, kn, mask, None, None)
    if dtype == torch.float32:
        assert max_err(out, ref) <= FP32_ATOL
        assert max_err(keys, ref_keys) <= FP32_ATOL
    else:
        check_error_budget(out, ref, truth, f"out {dtype} T={steps}")
        check_error_budget(keys, ref_keys, truth_keys, f"normalised keys {dtype} T={steps}")


@pytest.mark.parametrize("steps,cached", [(1, 5), (7, 70), (big(30, 96), big(200, 1000)), (3, 0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_streaming_chunk_attends_to_cache_within_error_budget(dtype, steps, cached):
    q, k, v, qn, kn, kc, vc = _inputs(2, steps, dtype, seed=steps + cached, cache=cached)
    if kc is None:  # an empty cache (0 frames) is still a cache
        kc = vc = torch.empty(2, HEADS, 0, DIM, dtype=dtype, device=DEVICE)
    keys = torch.empty(2, HEADS, steps, DIM, dtype=dtype, device=DEVICE)
    out = K.dit_attention(q, k, v, qn, kn, None, kc, vc, k_out=keys)
    ref, ref_keys, _ = K.dit_attention_ref(q, k, v, qn, kn, None, kc, vc)
    truth, _, _ = _truth(q, k, v, qn, kn, None, kc, vc)
    if dtype == torch.float32:
        assert max_err(out, ref) <= FP32_ATOL
    else:
        check_error_budget(out, ref, truth, f"chunk {dtype} T={steps} cache={cached}")
    torch.testing.assert_close(keys, ref_keys[:, :, :steps], rtol=0, atol=FP32_ATOL if dtype == torch.float32
                               else 2 * torch.finfo(dtype).eps * float(ref_keys.abs().max()))


def test_strided_views_of_linear_outputs():
    """q/k/v arrive as [B, T, H, D] views of the [B, T, H·D] projections (here of one fused buffer)."""
    gen = torch.Generator().manual_seed(5)
    qkv = randn(2, 9, 3 * HEADS * DIM, generator=gen)
    q, k, v = (t.view(2, 9, HEADS, DIM) for t in qkv.split(HEADS * DIM, dim=-1))
    qn, kn = _norm(gen, torch.float32), _norm(gen, torch.float32)
    out = K.dit_attention(q, k, v, qn, kn)
    ref, _, _ = K.dit_attention_ref(q, k, v, qn, kn)
    assert max_err(out, ref) <= FP32_ATOL


def test_layer_dispatch_forced_triton_equals_reference():
    q, k, v, qn, kn, kc, vc = _inputs(2, 11, torch.float32, seed=9, cache=6)
    mask = _padding(2, 11)[:, None, :]  # [B, 1, T] as the DiT passes it
    for kwargs in ({"mask": mask}, {"cache": (kc, vc)}, {}):
        with kernel_backend("triton", "dit_attention"):
            got = dit_attention_layer(q, k, v, qn, kn, **kwargs)
        with kernel_backend("reference"):
            ref = dit_attention_layer(q, k, v, qn, kn, **kwargs)
        for g, r in zip(got, ref):
            assert g.shape == r.shape and max_err(g, r) <= FP32_ATOL


def test_query_dependent_mask_is_not_taken_by_the_kernel():
    q, k, v, qn, kn, _, _ = _inputs(1, 6, torch.float32, seed=2)
    block_causal = torch.ones(1, 6, 6, dtype=torch.bool, device=DEVICE).tril()
    with kernel_backend("triton", "dit_attention"), pytest.raises(BackendUnavailableError, match="mask"):
        dit_attention_layer(q, k, v, qn, kn, mask=block_causal)
    if DEVICE.type == "cpu":  # auto on CPU: always the reference
        dit_attention_layer(q, k, v, qn, kn, mask=block_causal)


@pytest.mark.parametrize("frames", [1, 13])
def test_dit_model_forward_and_chunks_with_kernels_match_reference(frames):
    """The whole DiT (attention + adaLN kernels) forced onto Triton vs the reference path."""
    cfg = DiTConfig(hidden_size=64, depth=2, num_heads=2, head_dim=32, mlp_ratio=2.0)
    dit = randomize_(DiT(cfg), seed=1, depth=2).to(DEVICE).eval()
    gen = torch.Generator().manual_seed(frames)
    x, mu, cond = (randn(2, 80, frames, generator=gen) for _ in range(3))
    t, spks = torch.rand(2, generator=gen).to(DEVICE), randn(2, 80, generator=gen)
    mask = torch.ones(2, 1, frames, device=DEVICE)
    mask[1, :, frames // 2 + 1:] = 0
    outs = {}
    for backend in ("triton", "reference"):
        with kernel_backend(backend), torch.no_grad():
            full = dit(x, mask, mu, t, spks, cond)
            first, cache = dit.forward_chunk(x, mu, t, spks, cond, None)
            second, cache2 = dit.forward_chunk(x, mu, t, spks, cond, cache)
        outs[backend] = (full, first, second, cache2.k, cache2.v)
    for got, ref in zip(outs["triton"], outs["reference"]):
        assert max_err(got, ref) <= 1e-4  # fp32 through 2 blocks: summation order only (~1e-6 seen)


def test_bad_arguments_raise_clear_errors():
    q, k, v, qn, kn, kc, vc = _inputs(1, 4, torch.float32, seed=3, cache=2)
    with pytest.raises(InvalidInputError, match="k:"):
        K.dit_attention(q, k[:, :3], v, qn, kn)
    with pytest.raises(InvalidInputError, match="head dim"):
        K.dit_attention(q[..., :24], k[..., :24], v[..., :24], (qn[0][:24], qn[1][:24], 1e-5),
                        (kn[0][:24], kn[1][:24], 1e-5))
    with pytest.raises(InvalidInputError, match="both or neither"):
        K.dit_attention(q, k, v, qn, kn, None, kc, None)
    with pytest.raises(InvalidInputError, match="key_mask"):
        K.dit_attention(q, k, v, qn, kn, torch.ones(1, 5, dtype=torch.bool, device=DEVICE))
    with pytest.raises(InvalidInputError, match="q_norm"):
        K.dit_attention(q, k, v, (qn[0][:8], qn[1], 1e-5), kn)
    with pytest.raises(InvalidInputError, match="k:"):
        K.dit_attention(q, k.to(torch.float16), v, qn, kn)


def test_reference_matches_sdpa_with_layernorm_modules():
    """The kernel module's reference is upstream's ops (checked here on the CPU in fp64)."""
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 5, 2, 16, generator=gen, dtype=torch.float64) for _ in range(3))
    ln = torch.nn.LayerNorm(16).double()
    out, keys, _ = K.dit_attention_ref(q, k, v, (ln.weight, ln.bias, ln.eps), (ln.weight, ln.bias, ln.eps))
    want = F.scaled_dot_product_attention(ln(q.transpose(1, 2)), ln(k.transpose(1, 2)), v.transpose(1, 2))
    torch.testing.assert_close(out, want.transpose(1, 2))
