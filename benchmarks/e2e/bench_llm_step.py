"""One Step1 decode step and one prefill, with upstream's seven GEMMs per layer vs fused q|k|v and
gate|up (four GEMMs per layer), in the same run on the same weights.

    python benchmarks/e2e/bench_llm_step.py                                    # dummy:tiny, CPU
    python benchmarks/e2e/bench_llm_step.py --model dummy:full --layers 2      # real dims, 2 layers, CPU
    python benchmarks/e2e/bench_llm_step.py --model dummy:full --device cuda   # bf16, eager + CUDA graphs

The decode step is batch 1 at position `--prefill` over the static KV cache (the offline path:
`GraphedDecoder`, eager, and on CUDA replayed from a CUDA graph), full LM head; the prefill runs
`--prefill` tokens in one call and computes the last row's logits only. At batch-1 decode each
GEMM is a GEMV that reads its weight once, so fusion does not change the bytes read: it saves 3
launches per layer and lets the small k/v GEMVs ([256, 3072] for the real model) run inside one
kernel wide enough to reach the card's bandwidth. The LM head ([74752, 3072]) is the same in both:
with few `--layers` it dominates a step and dilutes the ratio. On a CPU only the ratios mean
anything, and little: a CPU GEMV is bandwidth-bound whichever way it is split, and the 2-vCPU dev
machine swings by up to 2x between rounds (a 300-token prefill of 2 full-size layers took 1.4 s or
3.4 s), hence alternating rounds, medians and mins. The fused/unfused logits' max difference is
recorded as a check.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import (
    copy_bandwidth_gbs,
    environment,
    finish,
    progress,
    result_path,
    time_ms,
)
from editx.engine.kv_cache import KVCache
from editx.engine.model_runner import GraphedDecoder
from editx.loading.components import DUMMY_PRESETS, build_dummy_llm, dummy_spec
from editx.models.step1 import check_dtype


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="dummy:tiny", choices=DUMMY_PRESETS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="default bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--layers", type=int, default=None, help="cut the preset to its first N layers (CPU runs)")
    p.add_argument("--prefill", type=int, default=300, help="prompt tokens; the decode step runs after them")
    p.add_argument("--repeats", type=int, default=None, help="timed decode steps per round (default 50 CUDA, 10 CPU)")
    p.add_argument("--rounds", type=int, default=4,
                   help="rounds of both variants, the order alternating (CPU timings drift; summaries over rounds)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/llm_step_<device>_<model>.json)")
    return p.parse_args(argv)


def build(args) -> torch.nn.Module:
    cfg = dummy_spec(args.model).llm
    if args.layers is not None:
        cfg = dataclasses.replace(cfg, num_hidden_layers=args.layers)
    device = torch.device(args.device)
    dtype = check_dtype(args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    # the loaders' own dummy LLM, left unfused: the baseline runs first on exactly these weights
    return build_dummy_llm(cfg, device, dtype, seed=0, fuse=False)


def measure(model, ids: torch.Tensor, repeats: int) -> tuple[dict, dict]:
    """Timings (median and min ms) of a prefill and a decode step of `model` as it is now (fused or
    not), keyed "prefill", "decode_eager" (and "decode_graphed" on CUDA), and the logits of each."""
    device, prompt = model.device, ids.shape[1] - 1
    start = torch.zeros(1, dtype=torch.long, device=device)
    last = torch.tensor([prompt - 1], device=device)
    timings, logits = {}, {}
    with torch.inference_mode():
        cache = KVCache.for_model(model, 1, prompt)

        def prefill() -> torch.Tensor:
            return model(ids[:, :prompt], cache, start, logits_at=last)

        logits["prefill"] = prefill().float()
        timings["prefill"] = time_ms(prefill, device, warmup=1, repeats=max(5, repeats // 10))
        for graphed in (False, True) if device.type == "cuda" else (False,):
            key = "decode_graphed" if graphed else "decode_eager"
            timings[key], logits[key] = decode_step(model, cache, ids, graphed, repeats)
    return timings, logits


def decode_step(model, cache: KVCache, ids: torch.Tensor, graphed: bool, repeats: int) -> tuple[dict, torch.Tensor]:
    """Time one decode step after the prompt in `cache` (ids[:, :-1]) through a `GraphedDecoder`; its logits."""
    prompt, device = ids.shape[1] - 1, model.device
    runner = GraphedDecoder(model, 1, prompt + 1, use_graphs=graphed)
    runner.cache.k[:, :, :, :prompt] = cache.k  # the prompt's K/V; every step writes slot `prompt`
    runner.cache.v[:, :, :, :prompt] = cache.v
    step_ids, pos = ids[:, prompt:], torch.full((1,), prompt, device=device)

    def step() -> torch.Tensor:
        return runner.step(step_ids, runner.cache, pos, prompt + 1)

    logits = step().clone()
    # the runner (and its graphs, which hold the current weights' addresses) ends with this call
    return time_ms(step, device, warmup=3, repeats=repeats), logits


def summarize(runs: list[dict]) -> dict:
    """Per measurement over rounds: the median of the rounds' medians and the smallest sample (the
    least disturbed run: on a shared CPU, other load only ever adds time)."""
    return {key: {"median_ms": statistics.median(run[key]["median_ms"] for run in runs),
                  "min_ms": min(run[key]["min_ms"] for run in runs)} for key in runs[0]}


def weight_bytes(model) -> int:
    """Bytes a batch-1 decode step reads from weights: all but the embedding table (a gather)."""
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "embed_tokens" not in n)


def main(argv=None) -> dict:
    args = parse_args(argv)
    model = build(args)
    device, cfg = model.device, model.config
    repeats = args.repeats or (50 if device.type == "cuda" else 10)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(65536, 65536 + 5120, (1, args.prefill + 1), generator=gen).to(device)  # audio ids
    rounds: dict[str, list[dict]] = {"unfused": [], "fused": []}
    logits: dict[str, dict] = {}
    progress(f"{args.model} ({cfg.num_hidden_layers} layers, {model.dtype}) on {device}")
    for r in range(args.rounds):
        # the same weights in both layouts (unfuse / fuse copy the projections); alternating which runs
        # first keeps a drift of the machine's speed from favouring one of them
        for variant in ("unfused", "fused") if r % 2 == 0 else ("fused", "unfused"):
            progress(f"round {r + 1}: {variant}")
            model.fuse_projections() if variant == "fused" else model.unfuse_projections()
            assert model.projections_fused == (variant == "fused")
            timings, logits[variant] = measure(model, ids, repeats)
            rounds[variant].append(timings)
    unfused, fused = (summarize(rounds[name]) for name in ("unfused", "fused"))
    diffs = {k: float((logits["fused"][k] - logits["unfused"][k]).abs().max()) for k in logits["fused"]}
    ratios = {k: {stat: unfused[k][stat + "_ms"] / fused[k][stat + "_ms"] for stat in ("median", "min")}
              for k in unfused}
    for name in (n for n in unfused if n.startswith("decode")):
        for variant in (unfused, fused):
            variant[name]["tok_s"] = 1e3 / variant[name]["median_ms"]
    payload = {
        "benchmark": "e2e/llm_step", "env": environment(device), "model": args.model,
        "layers": cfg.num_hidden_layers, "dtype": str(model.dtype).replace("torch.", ""),
        "hidden": cfg.hidden_size, "intermediate": cfg.intermediate_size, "heads": cfg.num_attention_heads,
        "kv_groups": cfg.num_attention_groups, "prefill_tokens": args.prefill, "decode_repeats": repeats,
        "gemms_per_layer": {"unfused": 7, "fused": 4}, "weight_bytes_per_step": weight_bytes(model),
        "unfused": unfused, "fused": fused, "speedup_fused": ratios, "max_abs_logit_diff": diffs,
        "rounds": rounds,
    }
    if device.type == "cuda":  # the weights-only floor of a decode step (dummy:full: 7 GB of bf16 weights
        # vs 20 MB of K/V at 300 tokens)
        bandwidth = copy_bandwidth_gbs(device)
        payload["copy_bandwidth_gbs"] = bandwidth
        payload["weights_only_floor_tok_s"] = bandwidth * 1e9 / payload["weight_bytes_per_step"]
    out = result_path(args.out, "llm_step", device, args.model)
    rows = [(f"{name} ({stat})", (f"unfused {unfused[name][stat + '_ms']:9.3f} ms | "
                                  f"fused {fused[name][stat + '_ms']:9.3f} ms | x{ratios[name][stat]:.3f}"))
            for name in ratios for stat in ("median", "min")]
    rows += [(f"{name} tok/s", (f"unfused {unfused[name]['tok_s']:8.1f} | fused {fused[name]['tok_s']:8.1f} | "
                                f"max |Δlogit| {diffs[name]:.2e}")) for name in ratios if name.startswith("decode")]
    return finish(out, payload, rows)


if __name__ == "__main__":
    main()
