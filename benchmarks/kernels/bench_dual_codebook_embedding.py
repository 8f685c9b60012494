"""Dual-codebook embedding: fused Triton kernel (mixed ids → pairs → gather → concat) vs torch ops.

    python benchmarks/kernels/bench_dual_codebook_embedding.py
    TRITON_INTERPRET=1 python benchmarks/kernels/bench_dual_codebook_embedding.py --device cpu --quick

Real table: 5121 × 256 (fp32, the flow's dtype), 512-dim frames. Sequences of T token frames
(150 ≈ 6 s of audio, 750 ≈ 30 s), batch 1 and 16 ragged sequences; the pairs-only kernel (what
FlowModel.embed_tokens runs) too. GB/s count the output bytes written (the gathers read as much).
"""
from __future__ import annotations

import torch

from _bench import finish, max_abs_diff, parse_args, row, time_us

from editx.kernels.dual_codebook_embedding import (mixed_embedding, mixed_to_pairs_ref, pair_embedding,
                                                   pair_embedding_ref)


def _mixed_ids(n: int, device) -> torch.Tensor:
    i = torch.arange(n, device=device)
    return torch.where(i % 5 < 2, torch.randint(0, 1024, (n,), device=device),
                       torch.randint(1024, 5120, (n,), device=device))


def _case(args, batch, frames, half, dtype):
    dev = args.device
    table = torch.randn(5121, half, device=dev).to(dtype)
    n_ids = frames // 3 * 5 - 2  # a ragged tail
    seqs = [_mixed_ids(n_ids - 5 * (s % 3), dev) for s in range(batch)]
    ids = torch.cat(seqs)
    lens = [s.numel() for s in seqs]
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device=dev)
    groups = max(-(-n // 5) for n in lens)
    out = torch.empty(batch, 3 * groups, 2 * half, device=dev, dtype=dtype)
    offsets = torch.arange(batch, device=dev) * out.stride(0)
    kernel = lambda: mixed_embedding(ids, cu, table, out, offsets, groups)  # noqa: E731

    def reference():  # what the runtime does without the kernel: reshape per sequence, embed, pad, stack
        embedded = [pair_embedding_ref(mixed_to_pairs_ref(s), table) for s in seqs]
        return torch.stack([torch.nn.functional.pad(e, (0, 0, 0, 3 * groups - e.shape[0])) for e in embedded])

    kernel()
    ref = reference()
    diff = max(max_abs_diff(out[s, : 3 * -(-lens[s] // 5)], ref[s, : 3 * -(-lens[s] // 5)]) for s in range(batch))
    moved = sum(3 * -(-n // 5) for n in lens) * 2 * half * table.element_size()
    res = [row(f"mixed ids B={batch} T={frames}", {"form": "mixed", "batch": batch, "frames": frames, "dim": 2 * half,
                                                  "dtype": str(dtype)[6:]},
               time_us(kernel, dev, args.quick), time_us(reference, dev, args.quick), bytes_moved=moved,
               max_diff=diff)]
    common = 5 * (min(lens) // 5)  # whole groups every sequence has: the pairs form takes equal lengths
    pairs = torch.stack([mixed_to_pairs_ref(s[:common]) for s in seqs])
    pk = lambda: pair_embedding(pairs, table)  # noqa: E731
    pr = lambda: pair_embedding_ref(pairs, table)  # noqa: E731
    res.append(row(f"pairs B={batch} T={pairs.shape[1]}", {"form": "pairs", "batch": batch, "frames": pairs.shape[1],
                                                         "dim": 2 * half, "dtype": str(dtype)[6:]},
                   time_us(pk, dev, args.quick), time_us(pr, dev, args.quick),
                   bytes_moved=pairs.shape[0] * pairs.shape[1] * 2 * half * table.element_size(),
                   max_diff=max_abs_diff(pk(), pr())))
    return res


def main(argv=None):
    args = parse_args(__doc__.split("\n\n")[0], argv)
    if args.quick:
        cases = [(2, 30, 16, torch.float32)]
    else:
        cases = [(b, t, 256, torch.float32) for b in (1, 16) for t in (150, 750)]
    results = [r for c in cases for r in _case(args, *c)]
    path = finish("dual_codebook_embedding", args, results,
                  "reference = reshape_mixed_tokens-equivalent torch ops + two embedding gathers + cat (+ pad/stack "
                  "for a batch); kernel = one launch writing into the output buffer")
    print(path)


if __name__ == "__main__":
    main()
