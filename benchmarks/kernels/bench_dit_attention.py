"""DiT attention (q/k LayerNorm + attention) Triton kernel vs torch (LayerNorm + SDPA), at the real DiT shapes.

    python benchmarks/kernels/bench_dit_attention.py                  # CUDA: 8 heads x 64, batch 2 (CFG pair)
    TRITON_INTERPRET=1 python benchmarks/kernels/bench_dit_attention.py --device cpu --quick

Offline: T = 150 … 1500 mel frames attend to each other (fp32, the decoder's dtype upstream; bf16
too). Streaming: a chunk of new frames attends to itself plus a cache of prompt + history frames.
TFLOP/s count 4·B·H·Tq·Tk·D (QKᵀ and PV).
"""
from __future__ import annotations

import torch

from _bench import finish, max_abs_diff, parse_args, row, time_us

from editx.kernels.dit_attention import dit_attention, dit_attention_ref


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


def main(argv=None):
    args = parse_args(__doc__.split("\n\n")[0], argv)
    if args.quick:
        cases = [(2, 2, 16, 37, 0, torch.float32), (2, 2, 16, 9, 20, torch.float32)]
    else:
        cases = [(2, 8, 64, t, 0, dt) for dt in (torch.float32, torch.bfloat16) for t in (150, 300, 600, 1000, 1500)]
        cases += [(2, 8, 64, t, c, torch.float32) for t, c in ((30, 500), (48, 500), (96, 1000))]
    results = [_case(args, *c) for c in cases]
    path = finish("dit_attention", args, results,
                  "reference = F.layer_norm(q), F.layer_norm(k) + SDPA (+ cache concat in chunk mode), as the "
                  "runtime's reference path; kernel = one launch incl. the normalised-key output for the cache")
    print(path)


if __name__ == "__main__":
    main()
