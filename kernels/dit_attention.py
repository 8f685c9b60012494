"""DiT attention of the flow estimator (spec §5.6, §6): per-head q/k LayerNorm fused with flash attention.

Math (upstream `decoder_dit.Attention`): q, k, v = to_q/k/v(x) split into H heads of D;
q = LN_q(q), k = LN_k(k) (LayerNorm over D, affine, eps 1e-5; the result is rounded to the
activation dtype as torch's LayerNorm returns it); out = softmax(q·kᵀ/√D + mask)·v. No
positions, no bias: the keys can come in any order.

One launch covers the whole batch (the CFG pair [cond; uncond] is batch rows 2b, 2b+1 of the
same call), all heads and all query tiles. Keys come from two sources, both optional:
* new   [B, Tn, H, D] raw projections (the call's own frames; normalised in the kernel). With
        `k_out` the normalised keys are also written out (the streaming cache needs them).
* cache [B, H, Tc, D] keys/values cached by earlier streaming chunks (already normalised).
Queries are the call's frames, q [B, Tn, H, D] raw. Online softmax, no T×T matrix.

Key masks (False = padding; ragged batches), one per batch row, shared by all its queries:
* [B, Tn]      covers the new keys only; cached keys (if any) are all visible.
* [B, Tn + Tc] covers [new | cache] in that order, as the keys come out: a ragged streaming
               batch (`editx.models.flow.dit.ragged_chunk_mask`) right-pads each row's chunk to
               Tn and its cache to Tc, so each row sees its own prefix of both parts.
Masked keys are never read (their cached keys/values are not even loaded). A query row with no
visible key returns zeros (SDPA would return NaN; padding masks always leave one key visible).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from editx.errors import InvalidInputError

from ._triton import (HAS_TRITON, check_shape, check_tensor, check_unit_stride, is_interpreted, next_pow2,
                      require_launchable, tl, triton)


# =======================================================================================
# Reference
# =======================================================================================
def dit_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_norm: tuple, k_norm: tuple,
                      key_mask: torch.Tensor | None = None, k_cache: torch.Tensor | None = None,
                      v_cache: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plain-PyTorch DiT attention (upstream's ops).

    q, k, v [B, T, H, D] raw projections; q_norm, k_norm = (weight [D], bias [D], eps);
    key_mask [B, T] (new keys; cached keys all visible) or [B, T+Tc] ([new | cache]) bool, or
    None; k_cache/v_cache [B, H, Tc, D] or None.
    Returns (out [B, T, H, D], keys [B, H, T+Tc, D] normalised, values [B, H, T+Tc, D]) with
    this call's frames first (upstream prepends new keys to the cache).
    """
    qh = F.layer_norm(q.transpose(1, 2), (q.shape[-1],), *q_norm)  # [B, H, T, D]
    kh = F.layer_norm(k.transpose(1, 2), (k.shape[-1],), *k_norm)
    vh = v.transpose(1, 2)
    if k_cache is not None:
        kh = torch.cat([kh, k_cache], dim=2)
        vh = torch.cat([vh, v_cache], dim=2)
    mask = None
    if key_mask is not None:
        mask = key_mask.bool()
        if k_cache is not None and mask.shape[1] == q.shape[1]:  # new keys only: the cache is all visible
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], k_cache.shape[2])], dim=1)
        mask = mask[:, None, None, :]  # [B, 1, 1, Tk]
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)
    return out.transpose(1, 2), kh, vh


# =======================================================================================
# Kernel
# =======================================================================================
if HAS_TRITON:

    @triton.jit
    def _dit_attention_kernel(
        q_ptr, k_ptr, v_ptr, mask_ptr, kc_ptr, vc_ptr, o_ptr, kout_ptr,
        qw_ptr, qb_ptr, kw_ptr, kb_ptr, q_eps, k_eps,
        T_new, T_cache, H, qk_scale,
        sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h, sm_b,
        skc_b, skc_h, skc_t, svc_b, svc_h, svc_t, so_b, so_t, so_h, sko_b, sko_h, sko_t,
        D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        HAS_MASK: tl.constexpr, MASK_CACHE: tl.constexpr, HAS_CACHE: tl.constexpr, HAS_KOUT: tl.constexpr,
        UPCAST_DOT: tl.constexpr, PRECISION: tl.constexpr,
    ):
        # One program: BLOCK_M queries of one (batch row, head) against all its keys.
        # Written without helper functions: the interpreter pays ~20 ms per nested jit call.
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = (bh // H).to(tl.int64)
        h = (bh % H).to(tl.int64)
        dtype = q_ptr.dtype.element_ty
        d = tl.arange(0, D)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < T_new

        # q = LayerNorm(q) over D in fp32, rounded to the activation dtype (as torch returns it)
        q = tl.load(q_ptr + b * sq_b + h * sq_h + rows[:, None].to(tl.int64) * sq_t + d[None, :],
                    mask=row_ok[:, None], other=0.0).to(tl.float32)
        mean = tl.sum(q, axis=1) / D
        q = q - mean[:, None]
        q = q * tl.rsqrt(tl.sum(q * q, axis=1) / D + q_eps)[:, None]
        q = q * tl.load(qw_ptr + d).to(tl.float32)[None, :] + tl.load(qb_ptr + d).to(tl.float32)[None, :]
        q = q.to(dtype)
        if UPCAST_DOT:
            q = q.to(tl.float32)
        kw = tl.load(kw_ptr + d).to(tl.float32)[None, :]
        kb = tl.load(kb_ptr + d).to(tl.float32)[None, :]

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32)
        # Keys 0 .. T_new-1 are the call's own frames (raw: normalised here), keys T_new .. after
        # them come from the cache (already normalised); one loop covers both (order is irrelevant).
        for start in range(0, T_new + T_cache, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            is_new = cols < T_new
            new64 = cols[:, None].to(tl.int64)
            k = tl.load(k_ptr + b * sk_b + h * sk_h + new64 * sk_t + d[None, :], mask=is_new[:, None],
                        other=0.0).to(tl.float32)
            kmean = tl.sum(k, axis=1) / D
            k = k - kmean[:, None]
            k = k * tl.rsqrt(tl.sum(k * k, axis=1) / D + k_eps)[:, None]
            k = (k * kw + kb).to(dtype)
            if HAS_KOUT:
                if pid_m == 0:  # one program per (b, h) writes the normalised keys for the cache
                    tl.store(kout_ptr + b * sko_b + h * sko_h + new64 * sko_t + d[None, :], k, mask=is_new[:, None])
            key_ok = is_new
            if HAS_MASK:
                # MASK_CACHE: the row's mask spans [new | cache] (ragged streaming batch), else new keys only
                flag_cols = (cols < T_new + T_cache) if MASK_CACHE else is_new
                key_flag = tl.load(mask_ptr + b * sm_b + cols, mask=flag_cols, other=0) != 0
                key_ok = key_ok & key_flag
            # masked values are not loaded: p is exactly 0 there, and padding may hold anything
            v = tl.load(v_ptr + b * sv_b + h * sv_h + new64 * sv_t + d[None, :], mask=key_ok[:, None], other=0.0)
            if HAS_CACHE:
                cache_ok = (cols >= T_new) & (cols < T_new + T_cache)
                if MASK_CACHE:
                    cache_ok = cache_ok & key_flag  # a row's padded cache frames cost no memory traffic
                old64 = (cols - T_new)[:, None].to(tl.int64)
                kc = tl.load(kc_ptr + b * skc_b + h * skc_h + old64 * skc_t + d[None, :], mask=cache_ok[:, None],
                             other=0.0)
                vc = tl.load(vc_ptr + b * svc_b + h * svc_h + old64 * svc_t + d[None, :], mask=cache_ok[:, None],
                             other=0.0)
                k = tl.where(is_new[:, None], k, kc)
                v = tl.where(is_new[:, None], v, vc)
                key_ok = key_ok | cache_ok
            if UPCAST_DOT:
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # [M, N], log2 units
            s = tl.where(key_ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no visible key yet
            alpha = tl.exp2(m_i - m_safe)
            p = tl.exp2(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            p = p.to(dtype)  # P·V in the activation dtype, as flash kernels do
            if UPCAST_DOT:
                p = p.to(tl.float32)
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=PRECISION)
            m_i = m_new

        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        tl.store(o_ptr + b * so_b + h * so_h + rows[:, None].to(tl.int64) * so_t + d[None, :], out.to(dtype),
                 mask=row_ok[:, None])
else:  # pragma: no cover
    _dit_attention_kernel = None


# =======================================================================================
# Launcher
# =======================================================================================
_LOG2E = 1.4426950408889634


def _check_norm(norm: tuple, what: str, dim: int, device: torch.device) -> None:
    if not (isinstance(norm, tuple) and len(norm) == 3):
        raise InvalidInputError(f"{what}: expected (weight [D], bias [D], eps)")
    for t, name in ((norm[0], "weight"), (norm[1], "bias")):
        check_tensor(t, f"{what} {name}", 1, device=device)
        check_shape(t, f"{what} {name}", (dim,))
        check_unit_stride(t, f"{what} {name}")


def _checked_key_mask(key_mask: torch.Tensor | None, batch: int, steps: int, cache_len: int,
                      device: torch.device) -> tuple[torch.Tensor | None, bool]:
    """key_mask [B, T] or [B, T+Tc] → (the mask as the kernel reads it: 1-byte, unit key stride;
    whether it spans the cached keys too). Shape checks only: no device sync."""
    if key_mask is None:
        return None, False
    check_tensor(key_mask, "key_mask", 2, (torch.bool, torch.uint8, torch.int8), device)
    widths = (steps,) if cache_len == 0 else (steps, steps + cache_len)
    if key_mask.shape[0] != batch or key_mask.shape[1] not in widths:
        expected = " or ".join(f"[{batch}, {w}]" for w in widths)
        raise InvalidInputError(f"key_mask: expected shape {expected} (new keys, or new + cached keys), "
                                f"got {list(key_mask.shape)}")
    if key_mask.dtype == torch.bool:
        key_mask = key_mask.view(torch.uint8)
    if key_mask.shape[1] > 1 and key_mask.stride(1) != 1:
        key_mask = key_mask.contiguous()
    return key_mask, cache_len > 0 and key_mask.shape[1] == steps + cache_len


def dit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_norm: tuple, k_norm: tuple,
                  key_mask: torch.Tensor | None = None, k_cache: torch.Tensor | None = None,
                  v_cache: torch.Tensor | None = None, k_out: torch.Tensor | None = None,
                  block_m: int | None = None, block_n: int | None = None) -> torch.Tensor:
    """Fused q/k LayerNorm + flash attention (Triton). Shapes as `dit_attention_ref`.

    q, k, v [B, T, H, D] (any strides, D contiguous; D a power of two ≥ 16); key_mask
    bool/uint8/int8 [B, T] (new keys; the cache is all visible) or [B, T+Tc] ([new | cache],
    ragged streaming batches), or None; k_cache/v_cache [B, H, Tc, D] or None; k_out [B, H, T, D] or None:
    receives the normalised new keys. Returns out [B, T, H, D] (contiguous, q's dtype), so
    `out.view(B, T, H·D)` feeds the output projection without a copy.
    """
    require_launchable(_dit_attention_kernel, q.device, "dit_attention")
    check_tensor(q, "q", 4)
    batch, steps, heads, dim = q.shape
    for t, name in ((k, "k"), (v, "v")):
        check_tensor(t, name, 4, (q.dtype,), q.device)
        check_shape(t, name, (batch, steps, heads, dim))
    for t, name in ((q, "q"), (k, "k"), (v, "v")):
        check_unit_stride(t, name)
    if dim < 16 or dim != next_pow2(dim):
        raise InvalidInputError(f"q: head dim {dim} must be a power of two >= 16 for the Triton kernel")
    _check_norm(q_norm, "q_norm", dim, q.device)
    _check_norm(k_norm, "k_norm", dim, q.device)
    if (k_cache is None) != (v_cache is None):
        raise InvalidInputError("k_cache/v_cache: pass both or neither")
    cache_len = 0
    if k_cache is not None:
        for t, name in ((k_cache, "k_cache"), (v_cache, "v_cache")):
            check_tensor(t, name, 4, (q.dtype,), q.device)
            check_shape(t, name, (batch, heads, None, dim))
            check_unit_stride(t, name)
        if v_cache.shape[2] != k_cache.shape[2]:
            raise InvalidInputError(f"v_cache: {v_cache.shape[2]} frames, k_cache has {k_cache.shape[2]}")
        cache_len = k_cache.shape[2]
    key_mask, mask_covers_cache = _checked_key_mask(key_mask, batch, steps, cache_len, q.device)
    if k_out is not None:
        check_tensor(k_out, "k_out", 4, (q.dtype,), q.device)
        check_shape(k_out, "k_out", (batch, heads, steps, dim))
        check_unit_stride(k_out, "k_out")

    out = torch.empty(batch, steps, heads, dim, dtype=q.dtype, device=q.device)
    if batch == 0 or steps == 0:
        return out
    interpreted = is_interpreted(_dit_attention_kernel)
    if interpreted:  # few big tiles: the interpreter's cost is per program and per op, not per element
        block_m = block_m or min(512, max(16, next_pow2(steps)))
        block_n = block_n or 512
    block_m = block_m or (64 if steps >= 256 else 32)
    block_n = block_n or 64
    kc, vc = (k_cache, v_cache) if k_cache is not None else (q, q)
    ko = k_out if k_out is not None else q
    mask = key_mask if key_mask is not None else q
    mask_stride = key_mask.stride(0) if key_mask is not None else 0
    grid = (triton.cdiv(steps, block_m), batch * heads)
    _dit_attention_kernel[grid](
        q, k, v, mask, kc, vc, out, ko,
        q_norm[0], q_norm[1], k_norm[0], k_norm[1], float(q_norm[2]), float(k_norm[2]),
        steps, cache_len, heads, _LOG2E / math.sqrt(dim),
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), mask_stride,
        kc.stride(0), kc.stride(1), kc.stride(2), vc.stride(0), vc.stride(1), vc.stride(2),
        out.stride(0), out.stride(1), out.stride(2), ko.stride(0), ko.stride(1), ko.stride(2),
        D=dim, BLOCK_M=block_m, BLOCK_N=block_n,
        HAS_MASK=key_mask is not None, MASK_CACHE=mask_covers_cache, HAS_CACHE=k_cache is not None,
        HAS_KOUT=k_out is not None,
        UPCAST_DOT=interpreted and q.dtype != torch.float32,
        # fp32 runs (the decoder's default) keep IEEE products: SDPA in fp32 does not use TF32
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=4, num_stages=2,
    )
    return out
