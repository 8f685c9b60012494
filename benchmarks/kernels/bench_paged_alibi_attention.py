"""Step1 sqrt-ALiBi GQA attention: Triton kernel vs SDPA with a materialised bias, at the real Step1 shapes.

    python benchmarks/kernels/bench_paged_alibi_attention.py           # CUDA: 48 query heads / 4 KV groups x 64, bf16
    TRITON_INTERPRET=1 python benchmarks/kernels/bench_paged_alibi_attention.py --device cpu --quick

Cases: decode over the static cache (the CUDA-graphed runtime path) and over the paged pool
(block size 16), contexts 256 … 8192, batch 1 … 64; chunked prefill (512 new tokens). Two torch
baselines: `reference` = the runtime's reference path (bias [B, H, T, K] built in fp32 and cast
to bf16, GQA folded into SDPA) and `upstream` = repeat-interleaved K/V + SDPA with the bias, as
upstream runs it. GB/s count the K/V bytes read (decode is memory-bound); TFLOP/s 4·H·Tq·K·D.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from _bench import finish, max_abs_diff, parse_args, row, time_us

from editx.kernels.paged_alibi_attention import (contiguous_alibi_attention, contiguous_alibi_attention_ref,
                                                 paged_alibi_attention, paged_alibi_attention_ref)
from editx.models.step1 import alibi_bias_for_positions, alibi_slopes


def _static(args, batch, heads, groups, dim, ctx, steps, dtype):
    dev = args.device
    k, v = (torch.randn(batch, groups, ctx, dim, device=dev).to(dtype) for _ in range(2))
    q = torch.randn(batch, steps, heads, dim, device=dev).to(dtype)
    slopes = alibi_slopes(heads).to(dev)
    positions = (torch.full((batch, 1), ctx - steps, device=dev) + torch.arange(steps, device=dev))
    kernel = lambda: contiguous_alibi_attention(q, k, v, positions, ctx, slopes)  # noqa: E731

    def reference():
        bias = alibi_bias_for_positions(slopes, positions, ctx, dtype)
        return contiguous_alibi_attention_ref(q.transpose(1, 2), k, v, bias).transpose(1, 2)

    def upstream():
        bias = alibi_bias_for_positions(slopes, positions, ctx, dtype)
        rep = heads // groups
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.repeat_interleave(rep, 1),
                                              v.repeat_interleave(rep, 1), attn_mask=bias).transpose(1, 2)

    diff = max_abs_diff(kernel(), reference())
    kv_bytes = 2 * batch * groups * ctx * dim * k.element_size()
    name = f"static {'decode' if steps == 1 else f'prefill T={steps}'} B={batch} ctx={ctx}"
    return row(name, {"layout": "static", "batch": batch, "heads": heads, "groups": groups, "head_dim": dim,
                      "context": ctx, "new_tokens": steps, "dtype": str(dtype)[6:]},
               time_us(kernel, dev, args.quick), time_us(reference, dev, args.quick), bytes_moved=kv_bytes,
               flops=4 * batch * heads * steps * ctx * dim, max_diff=diff,
               upstream_us=round(time_us(upstream, dev, args.quick), 2))


def _paged(args, batch, heads, groups, dim, ctx, block_size, dtype):
    dev = args.device
    blocks_per_seq = math.ceil(ctx / block_size)
    num_blocks = batch * blocks_per_seq + 1
    k, v = (torch.randn(num_blocks, block_size, groups, dim, device=dev).to(dtype) for _ in range(2))
    tables = torch.randperm(num_blocks - 1, device=dev)[: batch * blocks_per_seq].view(batch, -1).int()
    seq_lens = torch.full((batch,), ctx, dtype=torch.int32, device=dev)
    cu = torch.arange(batch + 1, dtype=torch.int32, device=dev)
    positions = torch.full((batch,), ctx - 1, device=dev)
    q = torch.randn(batch, heads, dim, device=dev).to(dtype)
    slopes = alibi_slopes(heads).to(dev)
    a = (q, k, v, tables, seq_lens, cu, positions, slopes)
    kernel = lambda: paged_alibi_attention(*a)  # noqa: E731
    reference = lambda: paged_alibi_attention_ref(*a)  # noqa: E731
    diff = max_abs_diff(kernel(), reference())
    kv_bytes = 2 * batch * groups * ctx * dim * k.element_size()
    return row(f"paged decode B={batch} ctx={ctx} block={block_size}",
               {"layout": "paged", "batch": batch, "heads": heads, "groups": groups, "head_dim": dim,
                "context": ctx, "new_tokens": 1, "block_size": block_size, "dtype": str(dtype)[6:]},
               time_us(kernel, dev, args.quick), time_us(reference, dev, args.quick), bytes_moved=kv_bytes,
               flops=4 * batch * heads * ctx * dim, max_diff=diff)


def main(argv=None):
    args = parse_args(__doc__.split("\n\n")[0], argv)
    results = []
    if args.quick:
        results.append(_static(args, 2, 8, 2, 64, 40, 1, torch.float32))
        results.append(_static(args, 1, 8, 2, 64, 40, 7, torch.float32))
        results.append(_paged(args, 2, 8, 2, 64, 40, 16, torch.float32))
    else:
        bf16 = torch.bfloat16
        for batch in (1, 8, 64):
            for ctx in (256, 1024, 2048, 4096, 8192):
                results.append(_static(args, batch, 48, 4, 64, ctx, 1, bf16))
        for ctx in (512, 2048):
            results.append(_static(args, 1, 48, 4, 64, ctx, 512, bf16))
        for batch in (1, 8, 64):
            for ctx in (256, 2048, 8192):
                results.append(_paged(args, batch, 48, 4, 64, ctx, 16, bf16))
    path = finish("paged_alibi_attention", args, results,
                  "reference = bias materialised per call + SDPA (GQA folded, the runtime's reference; paged: "
                  "per-sequence gather loop); upstream_us = repeat-interleaved K/V + SDPA with the bias")
    print(path)


if __name__ == "__main__":
    main()
