"""DiT attention (q/k LayerNorm + attention) Triton kernel vs torch (LayerNorm + SDPA), at the real DiT shapes.

    python benchmarks/kernels/bench_dit_attention.py                  # CUDA: 8 heads x 64, batch 2 (CFG pair)
    TRITON_INTERPRET=1 python benchmarks/kernels/bench_dit_attention.py --device cpu --quick

Offline: T = 150 … 1500 mel frames attend to each other (fp32, the decoder's dtype upstream; bf16
too). Streaming: a chunk of new frames attends to itself plus a cache of prompt + history frames.
Ragged chunk batch: the batched streaming decoder's layout (several streams, rows [cond; uncond],
chunks right-padded to the widest, caches right-padded to the longest, one key mask [B, T+Tc] over
[new | cache]); before the kernel took it, the runtime ran the reference for these batches.
TFLOP/s count 4·H·D per (query, key) pair (QKᵀ and PV): 4·B·H·Tq·Tk·D, for ragged batches
over each row's valid pairs only (the padding is wasted work for both sides).
"""
from __future__ import annotations

import torch

from _bench import finish, max_abs_diff, parse_args, row, time_us

from editx.kernels.dit_attention import dit_attention, dit_attention_ref
from editx.models.flow.dit import ragged_chunk_mask


def _case(args, batch, heads, dim, steps, cached, dtype):
    dev = args.device
    q, k, v = (torch.randn(batch, steps, heads, dim, device=dev).to(dtype) for _ in range(3))
    norm = (torch.ones(dim, device=dev, dtype=dtype), torch.zeros(dim, device=dev, dtype=dtype), 1e-5)
    kc = vc = None
    if cached:
        kc, vc = (torch.randn(batch, heads, cached, dim, device=dev).to(dtype) for _ in range(2))
    keys = torch.empty(batch, heads, steps, dim, device=dev, dtype=dtype)
    kernel = lambda: dit_attention(q, k, v, norm, norm, None, kc, vc, k_out=keys)  # noqa: E731
    reference = lambda: dit_attention_ref(q, k, v, norm, norm, None, kc, vc)  # noqa: E731
    diff = max_abs_diff(kernel(), reference()[0])
    flops = 4 * batch * heads * steps * (steps + cached) * dim
    name = f"{'chunk' if cached else 'offline'} T={steps}" + (f"+{cached}" if cached else "") + f" {str(dtype)[6:]}"
    return row(name, {"batch": batch, "heads": heads, "head_dim": dim, "frames": steps, "cached": cached,
                      "dtype": str(dtype)[6:]},
               time_us(kernel, dev, args.quick), time_us(reference, dev, args.quick), flops=flops, max_diff=diff)


def _ragged_case(args, heads, dim, n_new, n_cached, dtype):
    """Streams with n_new[s] chunk frames and n_cached[s] cached frames, as CFG rows [cond; uncond]."""
    dev = args.device
    rows, cached = [*n_new, *n_new], [*n_cached, *n_cached]
    batch, steps, cache_width = len(rows), max(rows), max(cached)
    q, k, v = (torch.randn(batch, steps, heads, dim, device=dev).to(dtype) for _ in range(3))
    kc, vc = (torch.randn(batch, heads, cache_width, dim, device=dev).to(dtype) for _ in range(2))
    norm = (torch.ones(dim, device=dev, dtype=dtype), torch.zeros(dim, device=dev, dtype=dtype), 1e-5)
    mask = ragged_chunk_mask(rows, cached, steps, cache_width, dev)[:, 0, :]  # [B, T+Tc]
    keys = torch.empty(batch, heads, steps, dim, device=dev, dtype=dtype)
    kernel = lambda: dit_attention(q, k, v, norm, norm, mask, kc, vc, k_out=keys)  # noqa: E731
    reference = lambda: dit_attention_ref(q, k, v, norm, norm, mask, kc, vc)  # noqa: E731
    got, want = kernel(), reference()[0]
    diff = max(max_abs_diff(got[b, :n], want[b, :n]) for b, n in enumerate(rows))  # valid query rows
    flops = 4 * heads * dim * sum(n * (n + c) for n, c in zip(rows, cached))
    name = f"ragged chunk x{len(n_new)} T={max(n_new)}+{cache_width} {str(dtype)[6:]}"
    return row(name, {"batch": batch, "heads": heads, "head_dim": dim, "frames": list(n_new),
                      "cached": list(n_cached), "dtype": str(dtype)[6:]},
               time_us(kernel, dev, args.quick), time_us(reference, dev, args.quick), flops=flops, max_diff=diff)


def main(argv=None):
    args = parse_args(__doc__.split("\n\n")[0], argv)
    if args.quick:
        cases = [(2, 2, 16, 37, 0, torch.float32), (2, 2, 16, 9, 20, torch.float32)]
    else:
        cases = [(2, 8, 64, t, 0, dt) for dt in (torch.float32, torch.bfloat16) for t in (150, 300, 600, 1000, 1500)]
        cases += [(2, 8, 64, t, c, torch.float32) for t, c in ((30, 500), (48, 500), (96, 1000))]
    if args.quick:
        ragged = [(2, 16, (7, 13), (20, 0), torch.float32)]
    else:  # (streams' chunk frames, their cached frames): prompt + history caches of different ages
        ragged = [(8, 64, n, c, dt) for dt in (torch.float32, torch.bfloat16) for n, c in (
            ((48, 30), (500, 260)),
            ((48, 48, 30, 14), (500, 350, 260, 120)),
            ((48, 48, 48, 48, 30, 30, 14, 14), (500, 500, 420, 350, 260, 260, 120, 60)))]
    results = [_case(args, *c) for c in cases] + [_ragged_case(args, *c) for c in ragged]
    path = finish("dit_attention", args, results,
                  "reference = F.layer_norm(q), F.layer_norm(k) + SDPA (+ cache concat in chunk mode), as the "
                  "runtime's reference path; kernel = one launch incl. the normalised-key output for the cache; "
                  "ragged chunk = several streams' chunks over their own caches in one masked launch "
                  "(max_abs_diff over valid query rows)")
    print(path)


if __name__ == "__main__":
    main()
