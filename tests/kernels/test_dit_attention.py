"""DiT attention kernel (q/k LayerNorm + flash attention, masks, CFG batch, streaming cache, ragged
streaming chunk batches) vs torch."""
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
from editx.models.flow.dit import DiTCache, ragged_chunk_mask
from kernel_testing import DEVICE, DTYPES, ON_CUDA, big, check_error_budget, max_err, needs_kernels, randn

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


# -- ragged streaming chunk batches: per-row chunk and cache lengths -----------------------
# Layout as `DiT.forward_chunk` gets it from `ragged_chunk_mask`: row b's chunk frames right-padded
# to the batch's widest chunk, its cached frames right-padded to the widest cache, one key mask
# [B, T+Tc] over [new | cache]. Padding holds large garbage, so a leaked padded key moves the output.
RAGGED_CASES = [  # (chunk frames per row, cached frames per row): B = 2..4, odd chunks, empty caches
    ((13, 7), (0, 9)),
    ((7, 7), (3, 11)),  # equal chunks, ragged caches (n_valid is None in the DiT then)
    ((1, 13, 7), (5, 0, 17)),
    ((7, 1, 7, 1), (9, 0, 9, 0)),  # a CFG pair of two streams: [cond rows; uncond rows]
    ((13, 1, 7, 13), (2, 2, 0, 20)),
    ((13, 1), (0, 0)),  # no row has cached frames: a 0-frame cache, mask [B, T]
]
GARBAGE = 1e3


def _ragged_batch(n_new, n_cached, dtype, seed: int, garbage: float = GARBAGE):
    """q, k, v [B, W, H, D], norms, k_cache, v_cache [B, H, C, D] (right-padded, padding = garbage)
    and the key mask [B, W + C] bool from `ragged_chunk_mask`."""
    gen = torch.Generator().manual_seed(seed)
    batch, width, cache_width = len(n_new), max(n_new), max(n_cached)
    q, k, v = (torch.randn(batch, width, HEADS, DIM, generator=gen) * 2.0 for _ in range(3))
    kc, vc = (torch.randn(batch, HEADS, cache_width, DIM, generator=gen) for _ in range(2))
    for b, (n, c) in enumerate(zip(n_new, n_cached)):
        for t in (q, k, v):
            t[b, n:] = garbage
        for t in (kc, vc):
            t[b, :, c:] = garbage
    mask = ragged_chunk_mask(n_new, n_cached, width, cache_width, DEVICE)
    if mask is None:  # nothing padded at all
        mask = torch.ones(batch, 1, width + cache_width, dtype=torch.bool, device=DEVICE)
    move = lambda t: t.to(DEVICE, dtype)  # noqa: E731
    return (move(q), move(k), move(v), _norm(gen, dtype), _norm(gen, dtype), move(kc), move(vc),
            mask[:, 0, :])


def _row_reference(q, k, v, qn, kn, kc, vc, b: int, n: int, cached: slice):
    """Row b alone, unpadded: its n chunk frames against its cached frames `cached`."""
    return K.dit_attention_ref(q[b:b + 1, :n], k[b:b + 1, :n], v[b:b + 1, :n], qn, kn, None,
                               kc[b:b + 1, :, cached], vc[b:b + 1, :, cached])[0][0]


def _valid_rows(out: torch.Tensor, n_new) -> torch.Tensor:
    """The valid query rows of a right-padded [B, W, H, D] batch, concatenated."""
    return torch.cat([out[b, :n] for b, n in enumerate(n_new)])


@pytest.mark.parametrize("n_new,n_cached", RAGGED_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_ragged_chunk_batch_kernel_vs_reference_vs_rows(dtype, n_new, n_cached):
    """One launch over a ragged chunk batch = the batched reference = each row run alone; bf16/fp16
    under the error-budget rule against fp64 truth. The normalised new keys come out as the reference's."""
    q, k, v, qn, kn, kc, vc, mask = _ragged_batch(n_new, n_cached, dtype, seed=sum(n_new) * 7 + sum(n_cached))
    width = q.shape[1]
    if kc.shape[2] == 0:  # no cached frames anywhere: the mask covers the new keys only
        assert mask.shape[1] == width
    keys = torch.empty(len(n_new), HEADS, width, DIM, dtype=dtype, device=DEVICE)
    out = K.dit_attention(q, k, v, qn, kn, mask, kc, vc, k_out=keys)
    ref, ref_keys, _ = K.dit_attention_ref(q, k, v, qn, kn, mask, kc, vc)
    rows = torch.cat([_row_reference(q, k, v, qn, kn, kc, vc, b, n, slice(0, c))
                      for b, (n, c) in enumerate(zip(n_new, n_cached))])
    got = _valid_rows(out, n_new)
    if dtype == torch.float32:
        assert max_err(got, _valid_rows(ref, n_new)) <= FP32_ATOL
        assert max_err(got, rows) <= FP32_ATOL
        assert max_err(keys, ref_keys[:, :, :width]) <= FP32_ATOL
        return
    truth = _truth(q, k, v, qn, kn, mask, kc, vc)[0].to(DEVICE)
    what = f"ragged chunk {dtype} new={n_new} cached={n_cached}"
    check_error_budget(got, _valid_rows(ref, n_new), _valid_rows(truth, n_new), what)
    check_error_budget(got, rows, _valid_rows(truth, n_new), what + " (per-row reference)")


def test_ragged_chunk_batch_with_left_padded_caches():
    """The key mask is general, not a prefix rule: caches left-padded (valid frames at the end)
    and masked new keys in the middle of a row also work."""
    n_new, n_cached = (7, 13, 1), (4, 0, 9)
    q, k, v, qn, kn, kc, vc, _ = _ragged_batch(n_new, (9, 9, 9), torch.float32, seed=31)
    width, cache_width = q.shape[1], kc.shape[2]
    mask = torch.zeros(3, width + cache_width, dtype=torch.bool)
    for b, (n, c) in enumerate(zip(n_new, n_cached)):
        mask[b, :n] = True
        mask[b, width + cache_width - c:] = True
    mask[1, 5] = False  # a hole among the new keys of row 1
    mask = mask.to(DEVICE)
    out = K.dit_attention(q, k, v, qn, kn, mask, kc, vc)
    ref, _, _ = K.dit_attention_ref(q, k, v, qn, kn, mask, kc, vc)
    assert max_err(out, ref) <= FP32_ATOL  # every row, padded query rows included
    for b, (n, c) in enumerate(zip(n_new, n_cached)):
        if b == 1:
            continue  # the hole has no unpadded equivalent
        want = _row_reference(q, k, v, qn, kn, kc, vc, b, n, slice(cache_width - c, cache_width))
        assert max_err(out[b, :n], want) <= FP32_ATOL, f"row {b}"


def test_ragged_chunk_batch_ignores_non_finite_padding():
    """Padded frames may hold anything (uninitialised buffers): NaN/Inf padding never reaches a valid
    row; masked cached keys/values are not even read."""
    n_new, n_cached = (13, 1, 7), (0, 6, 11)
    q, k, v, qn, kn, kc, vc, mask = _ragged_batch(n_new, n_cached, torch.float32, seed=8, garbage=float("nan"))
    for t in (kc, vc):
        t[0, 0, :, :3] = float("inf")
    out = K.dit_attention(q, k, v, qn, kn, mask, kc, vc)
    for b, (n, c) in enumerate(zip(n_new, n_cached)):
        want = _row_reference(q, k, v, qn, kn, kc, vc, b, n, slice(0, c))
        assert max_err(out[b, :n], want) <= FP32_ATOL, f"row {b}"


def test_new_key_mask_with_a_cache_keeps_every_cached_key_visible():
    """The older form: key_mask [B, T] with a cache masks new keys only (kernel and reference agree)."""
    q, k, v, qn, kn, kc, vc = _inputs(2, 7, torch.float32, seed=12, cache=5)
    mask = _padding(2, 7)
    out = K.dit_attention(q, k, v, qn, kn, mask, kc, vc)
    ref, _, _ = K.dit_attention_ref(q, k, v, qn, kn, mask, kc, vc)
    full = torch.cat([mask, torch.ones(2, 5, dtype=torch.bool, device=DEVICE)], dim=1)
    assert max_err(out, ref) <= FP32_ATOL
    assert max_err(out, K.dit_attention(q, k, v, qn, kn, full, kc, vc)) <= FP32_ATOL


@pytest.mark.skipif(not ON_CUDA, reason="CUDA graphs need a GPU")
def test_ragged_chunk_batch_is_cuda_graph_capturable():
    """No host sync and no data-dependent host control flow: capture once, replay on new contents."""
    n_new, n_cached = (13, 7, 13, 7), (40, 3, 40, 3)
    q, k, v, qn, kn, kc, vc, mask = _ragged_batch(n_new, n_cached, torch.bfloat16, seed=4)
    layer_mask = mask[:, None, :].clone()
    dit_attention_layer(q, k, v, qn, kn, layer_mask, (kc, vc), backend="triton")  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = dit_attention_layer(q, k, v, qn, kn, layer_mask, (kc, vc), backend="triton")
    q2, k2, v2, _, _, kc2, vc2, _ = _ragged_batch(n_new, n_cached, torch.bfloat16, seed=5)
    for dst, src in ((q, q2), (k, k2), (v, v2), (kc, kc2), (vc, vc2)):
        dst.copy_(src)
    layer_mask[1, 0, 2] = False  # the mask is read on the device at replay too
    graph.replay()
    eager = dit_attention_layer(q, k, v, qn, kn, layer_mask, (kc, vc), backend="triton")
    for g, e in zip(captured, eager):
        assert torch.equal(g, e)


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


def test_layer_dispatch_ragged_chunk_batch_runs_the_kernel():
    """mask [B, 1, T+Tc] together with a cache: forced Triton takes it (no BackendUnavailableError)."""
    n_new = (7, 1, 13)
    q, k, v, qn, kn, kc, vc, mask = _ragged_batch(n_new, (5, 0, 9), torch.float32, seed=21)
    with kernel_backend("triton", "dit_attention"):
        out, keys, values = dit_attention_layer(q, k, v, qn, kn, mask[:, None, :], (kc, vc))
    with kernel_backend("reference"):
        ref_out, ref_keys, ref_values = dit_attention_layer(q, k, v, qn, kn, mask[:, None, :], (kc, vc))
    out, ref_out = (o.view(q.shape) for o in (out, ref_out))
    assert max_err(_valid_rows(out, n_new), _valid_rows(ref_out, n_new)) <= FP32_ATOL
    assert keys.shape == ref_keys.shape and max_err(keys, ref_keys) <= FP32_ATOL  # [new | cache], all frames
    assert torch.equal(values, ref_values)


def test_query_dependent_mask_is_not_taken_by_the_kernel():
    q, k, v, qn, kn, _, _ = _inputs(1, 6, torch.float32, seed=2)
    block_causal = torch.ones(1, 6, 6, dtype=torch.bool, device=DEVICE).tril()
    with kernel_backend("triton", "dit_attention"), pytest.raises(BackendUnavailableError, match="mask"):
        dit_attention_layer(q, k, v, qn, kn, mask=block_causal)
    if DEVICE.type == "cpu":  # auto on CPU: always the reference
        dit_attention_layer(q, k, v, qn, kn, mask=block_causal)


@pytest.mark.parametrize("n_new,n_cached", [((5, 13), (0, 7)), ((1, 7, 13), (9, 3, 0))])
def test_dit_ragged_chunk_batch_with_kernels_matches_reference(n_new, n_cached):
    """DiT.forward_chunk on a ragged multi-stream batch (CFG rows, masks from `ragged_chunk_mask`):
    forced Triton (the masked cache kernel, no fallback) vs the reference path; valid rows only."""
    cfg = DiTConfig(hidden_size=64, depth=2, num_heads=2, head_dim=32, mlp_ratio=2.0)
    dit = randomize_(DiT(cfg), seed=3, depth=2).to(DEVICE).eval()
    gen = torch.Generator().manual_seed(sum(n_new) + 10 * sum(n_cached))
    rows, cached = [*n_new, *n_new], [*n_cached, *n_cached]  # [cond rows; uncond rows]
    batch, width, cache_width = len(rows), max(rows), max(cached)
    x, mu, cond = (randn(batch, 80, width, generator=gen) for _ in range(3))
    t, spks = torch.rand(batch, generator=gen).to(DEVICE), randn(batch, 80, generator=gen)
    cache = DiTCache(k=randn(cfg.depth, batch, 2, cache_width, 32, generator=gen),
                     v=randn(cfg.depth, batch, 2, cache_width, 32, generator=gen),
                     conv=randn(cfg.depth, batch, 2, 64, 2, generator=gen))
    mask = ragged_chunk_mask(rows, cached, width, cache_width, DEVICE)
    n_valid = torch.tensor(rows, device=DEVICE)
    outs = {}
    for backend in ("triton", "reference"):
        with kernel_backend(backend), torch.no_grad():
            outs[backend] = dit.forward_chunk(x, mu, t, spks, cond, cache, mask=mask, n_valid=n_valid)
    (got, got_cache), (ref, ref_cache) = outs["triton"], outs["reference"]
    for b, n in enumerate(rows):
        assert max_err(got[b, :, :n], ref[b, :, :n]) <= 1e-4, f"row {b}"  # fp32, 2 blocks: order only
        for g, r in ((got_cache.k, ref_cache.k), (got_cache.v, ref_cache.v)):
            assert max_err(g[:, b, :, :n], r[:, b, :, :n]) <= 1e-4
            assert torch.equal(g[:, b, :, width:], r[:, b, :, width:])  # the old cache, copied


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
    with pytest.raises(InvalidInputError, match=r"key_mask: expected shape \[1, 4\] or \[1, 6\]"):
        K.dit_attention(q, k, v, qn, kn, torch.ones(1, 5, dtype=torch.bool, device=DEVICE), kc, vc)
    with pytest.raises(InvalidInputError, match="key_mask"):
        K.dit_attention(q, k, v, qn, kn, torch.ones(2, 6, dtype=torch.bool, device=DEVICE), kc, vc)
    with pytest.raises(InvalidInputError, match="key_mask"):
        K.dit_attention(q, k, v, qn, kn, torch.ones(1, 6, dtype=torch.float32, device=DEVICE), kc, vc)


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_layer_mask_must_cover_new_and_cached_keys(backend):
    """A [B, 1, T] mask with a cache is ambiguous for the layer (its keys are [new | cache]): both
    backends refuse it with the same clear error instead of failing inside SDPA."""
    q, k, v, qn, kn, kc, vc = _inputs(2, 4, torch.float32, seed=6, cache=3)
    with kernel_backend(backend, "dit_attention"), pytest.raises(InvalidInputError, match=r"mask: expected shape"):
        dit_attention_layer(q, k, v, qn, kn, mask=_padding(2, 4)[:, None, :], cache=(kc, vc))


def test_reference_matches_sdpa_with_layernorm_modules():
    """The kernel module's reference is upstream's ops (checked here on the CPU in fp64)."""
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 5, 2, 16, generator=gen, dtype=torch.float64) for _ in range(3))
    ln = torch.nn.LayerNorm(16).double()
    out, keys, _ = K.dit_attention_ref(q, k, v, (ln.weight, ln.bias, ln.eps), (ln.weight, ln.bias, ln.eps))
    want = F.scaled_dot_product_attention(ln(q.transpose(1, 2)), ln(k.transpose(1, 2)), v.transpose(1, 2))
    torch.testing.assert_close(out, want.transpose(1, 2))
