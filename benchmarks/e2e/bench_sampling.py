"""The engine's per-step sampling: `select_next_ids` (rows of equal parameters warped as one block, each
draw over the top-k ids), on full logits and on the audio-only columns the engine's LM head now
returns (`compact`, 5,121 ids), vs the previous implementation (every op row by row, each draw over
the whole 74,752-id vocabulary).

    python benchmarks/e2e/bench_sampling.py                       # CPU (ratios only)
    python benchmarks/e2e/bench_sampling.py --device cuda --rows 1 16 64

Both do the repetition ban, temperature 0.7, top-k 50, softmax and one multinomial draw per row
from that request's generator: the same distribution (tests/unit/test_select_next_ids.py), not the
same ids (the draws consume the generators differently). At 64 streams the per-row form launches ~6
small kernels per row before the draws; on a GPU that is launch overhead on every engine step.

The draw alone is timed too: the engine's batched inverse-CDF draw (`draw_rows`: one CPU uniform per
row, softmax + cumsum + searchsorted for the block) vs one `torch.multinomial` per row with a device
generator (the previous draw), both over the same kept top-k values.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import environment, finish, progress, result_path, time_ms  # noqa: E402

from editx.engine.generate import audio_logit_bias  # noqa: E402
from editx.engine.request import Request, _ban_repeats, _draw, select_next_ids  # noqa: E402
from editx.engine.sampling import (SampledVocab, SamplingParams, apply_temperature, apply_top_k,  # noqa: E402
                                   sample_rows)
from editx.models.step1 import Step1Config  # noqa: E402



def per_row(logits: torch.Tensor, requests) -> list[int]:
    """The previous engine sampling: every step op issued row by row."""
    scores = _ban_repeats(logits.float(), requests, 10, 0.1)
    out = []
    for i, r in enumerate(requests):
        row = scores[i:i + 1]
        warped = apply_top_k(apply_temperature(row, float(r.params.temperature)), int(r.params.top_k))
        out.append(torch.multinomial(torch.softmax(warped, dim=-1), 1, generator=r.generator).view(1))
    return torch.cat(out).to(device="cpu").tolist()


def multinomial_rows(scores, generators):
    """The previous engine draw: one multinomial per row with that row's (device) generator."""
    return sample_rows(scores, generators)


def generators(n: int, device: torch.device) -> list[torch.Generator]:
    return [torch.Generator(device=device).manual_seed(i) for i in range(n)]


def requests(n: int, device: torch.device) -> list[Request]:
    """n requests as the engine holds them (CPU sampling generators, `jobs.StreamRunner.request`)."""
    reqs = []
    for i in range(n):
        r = Request(id=i, prompt_ids=list(range(20)), params=SamplingParams(),
                    generator=torch.Generator().manual_seed(i), t2w=None, text="")
        r.generated = [(7 * i + j) % 5000 for j in range(30)]
        reqs.append(r)
    return reqs


def _on(req: Request, device: torch.device) -> Request:
    """The previous engine's request: its sampling generator on the device."""
    req.generator = torch.Generator(device=device).manual_seed(req.id)
    return req


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--rows", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    size = Step1Config.full().vocab_size
    bias = audio_logit_bias(size, 3, device)
    vocab = SampledVocab.from_bias(bias)
    levels = []
    for n in args.rows:
        logits = torch.randn(n, size, device=device, generator=torch.Generator(device=device).manual_seed(n))
        compact = logits[:, vocab.ids].contiguous()  # what the engine's audio-only LM head returns
        blocks = time_ms(lambda: select_next_ids(logits, requests(n, device)), device, warmup=2, repeats=7)
        cols = time_ms(lambda: select_next_ids(compact, requests(n, device), bias, vocab), device, warmup=2, repeats=7)
        rows = time_ms(lambda: per_row(logits, [_on(r, device) for r in requests(n, device)]), device, warmup=2,
                       repeats=7)
        batched = time_ms(lambda: _draw(compact, 0.7, 50, generators(n, "cpu")), device, warmup=2, repeats=7)
        multi = time_ms(lambda: _draw(compact, 0.7, 50, generators(n, device), draw=multinomial_rows), device,
                        warmup=2, repeats=7)
        levels.append({"rows": n, "blocks_ms": blocks["median_ms"], "compact_ms": cols["median_ms"],
                       "per_row_ms": rows["median_ms"], "speedup": rows["median_ms"] / blocks["median_ms"],
                       "compact_speedup": rows["median_ms"] / cols["median_ms"],
                       "draw_batched_ms": batched["median_ms"], "draw_multinomial_ms": multi["median_ms"],
                       "draw_speedup": multi["median_ms"] / batched["median_ms"]})
        progress(f"rows={n}: x{levels[-1]['speedup']:.2f} blocks, x{levels[-1]['compact_speedup']:.2f} compact, "
                 f"draw x{levels[-1]['draw_speedup']:.2f}")
    payload = {"benchmark": "e2e/sampling", "env": environment(device), "vocab": size,
               "compact_columns": int(vocab.ids.numel()), "levels": levels}
    out = result_path(args.out, "sampling", device)
    table = [(f"rows={lv['rows']:<3}", f"blocks {lv['blocks_ms']:8.3f} ms | compact {lv['compact_ms']:8.3f} ms"
              f" | per row {lv['per_row_ms']:8.3f} ms | x{lv['speedup']:.2f} / x{lv['compact_speedup']:.2f}"
              f" | draw: batched {lv['draw_batched_ms']:.3f} vs multinomial {lv['draw_multinomial_ms']:.3f} ms")
             for lv in levels]
    return finish(out, payload, table)


if __name__ == "__main__":
    main()
