"""Front end of a cold voice (prompt audio -> codes, mel, x-vector), stage by stage: the vq02 encoder
run call by call (upstream's loop, `encode_chunked`) vs layer by layer (`encode`), in the same run on
the same features.

    python benchmarks/e2e/bench_frontend.py                                  # dummy:tiny, CPU
    python benchmarks/e2e/bench_frontend.py --model dummy:full               # real encoder dims, CPU (slow)
    python benchmarks/e2e/bench_frontend.py --model dummy:full --device cuda

A cold voice's first audio waits for all of it (the voice cache skips it for a known voice).
The vq02 encoder (50 layers of width 512 in the real model) is driven once per 240 ms piece
upstream: 21 calls for a 5 s prompt, each re-reading every weight and launching ~1,000 small
kernels. Rounds alternate the two paths (CPU timings drift); medians and mins over rounds. Also
recorded: the paths' max output difference and how many k-means codes differ. Then `encode_voice` end
to end (the layer-wise encoder) with its three chains -- vq02, vq06, decoder conditioning (24 kHz mel,
CAM++) -- one after another and concurrently (the default), alternating, each with its stage split.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import DEFAULT_PROMPT, environment, finish, progress, result_path, sync  # noqa: E402

from editx import Runtime  # noqa: E402
from editx.engine.voice import encode_voice  # noqa: E402
from editx.frontend.audio_io import load_audio  # noqa: E402
from editx.frontend.prompt_audio import tokenizer_signal  # noqa: E402
from editx.frontend.vq02_features import extract_vq02_features  # noqa: E402
from editx.models.vq02 import kmeans_codes  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="dummy:tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--prompt-audio", default=str(DEFAULT_PROMPT))
    p.add_argument("--rounds", type=int, default=3, help="rounds of both encoder paths, alternating order")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/frontend_<device>_<model>.json)")
    return p.parse_args(argv)


def timed(fn, device: torch.device):
    """(result, wall ms) of fn() on a synchronised device."""
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return result, (time.perf_counter() - start) * 1e3


def summary(samples: list[float]) -> dict:
    return {"median_ms": statistics.median(samples), "min_ms": min(samples), "rounds": len(samples)}


def alternate(paths: dict[str, Callable[[], Any]], rounds: int, device: torch.device):
    """Each path once untimed (allocator, kernels, threads), then `rounds` rounds of all of them, the
    order reversed every other round (CPU timings drift). Returns ({name: [ms]}, {name: last result})."""
    results = {name: fn() for name, fn in paths.items()}
    times: dict[str, list[float]] = {name: [] for name in paths}
    for r in range(rounds):
        for name in (list(paths) if r % 2 == 0 else list(reversed(paths))):
            results[name], ms = timed(paths[name], device)
            times[name].append(ms)
    return times, results


def encoder_paths(comps, feats: torch.Tensor, lengths: list[int], rounds: int, device: torch.device) -> dict:
    """Both vq02 encoder paths on the same features, alternating; their difference in outputs and codes."""
    enc = comps.vq02
    with torch.inference_mode():
        times, outs = alternate({"call_by_call": lambda: enc.encode_chunked(feats, lengths),
                                 "layerwise": lambda: enc.encode(feats, lengths)}, rounds, device)
        codes = {name: kmeans_codes(out.float(), comps.centroids.float())[0] for name, out in outs.items()}
    result = {name: summary(t) for name, t in times.items()}
    result["speedup"] = result["call_by_call"]["median_ms"] / result["layerwise"]["median_ms"]
    result["max_abs_diff"] = (outs["layerwise"].float() - outs["call_by_call"].float()).abs().max().item()
    result["codes_differing"] = int((codes["layerwise"] != codes["call_by_call"]).sum())
    result["codes"] = int(codes["layerwise"].numel())
    result["calls"] = len(lengths)
    return result


def encode_voice_chains(rt, wav, sr, rounds: int, device: torch.device) -> dict:
    """The whole cold front end (layer-wise vq02 encoder) with its three chains (vq02, vq06, decoder
    conditioning) one after another and concurrently, alternating; each mode's stage split (a stage's
    own wall time, so concurrent stages overlap and include each other's contention)."""
    stages: dict[str, list[dict]] = {"serial": [], "parallel": []}

    def run(mode: str):
        voice = encode_voice(rt.components, wav, sr, dither=rt.config.vq02_dither, parallel=mode == "parallel",
                             generator=torch.Generator().manual_seed(0), resampler=rt.config.resampler)
        stages[mode].append({k.removesuffix("_s") + "_ms": v * 1e3 for k, v in voice.timings.items()})

    times, _ = alternate({mode: partial(run, mode) for mode in stages}, rounds, device)
    result = {}
    for mode, split in stages.items():
        split = split[1:]  # the untimed warm-up call's split is not a sample
        result[mode] = {**summary(times[mode]),
                        "stages_median_ms": {k: statistics.median(s[k] for s in split) for k in split[0]}}
    result["speedup"] = result["serial"]["median_ms"] / result["parallel"]["median_ms"]
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    rt = Runtime.from_pretrained(args.model, device=args.device)
    comps = rt.components
    progress(f"loaded {args.model} on {device}")
    wav, sr = load_audio(args.prompt_audio, what="prompt audio")
    prompt = tokenizer_signal(wav, sr, rt.config.resampler)  # what vq02 consumes
    feats, lengths = extract_vq02_features(prompt.wav16_trimmed, comps.cmvn, dither=0.0, config=comps.vq02_frontend)
    dtype = next(comps.vq02.parameters()).dtype
    feats = feats.to(device=device, dtype=dtype)
    encoder = encoder_paths(comps, feats, lengths, args.rounds, device)
    progress(f"vq02 encoder ({len(lengths)} calls): call by call {encoder['call_by_call']['median_ms']:.1f} ms, "
             f"layer by layer {encoder['layerwise']['median_ms']:.1f} ms (x{encoder['speedup']:.2f})")

    chains = encode_voice_chains(rt, wav, sr, args.rounds, device)
    progress(f"encode_voice: chains one after another {chains['serial']['median_ms']:.1f} ms, concurrently "
             f"{chains['parallel']['median_ms']:.1f} ms (x{chains['speedup']:.2f})")
    rt.close()
    payload = {"benchmark": "e2e/frontend", "model": args.model, "env": environment(device),
               "prompt_audio_s": wav.shape[-1] / sr, "vq02_dtype": str(dtype), "vq02_encoder": encoder,
               "encode_voice": chains}
    rows = [("vq02 encoder, call by call", f"{encoder['call_by_call']['median_ms']:9.1f} ms"),
            ("vq02 encoder, layer by layer", f"{encoder['layerwise']['median_ms']:9.1f} ms  "
             f"(x{encoder['speedup']:.2f}; max diff {encoder['max_abs_diff']:.2g}, "
             f"{encoder['codes_differing']}/{encoder['codes']} codes differ)")]
    for mode in ("serial", "parallel"):
        stage_ms = chains[mode]["stages_median_ms"]
        rows.append((f"encode_voice, chains {mode}", f"{chains[mode]['median_ms']:9.1f} ms  "
                     + ", ".join(f"{k} {v:.1f}" for k, v in stage_ms.items())))
    return finish(result_path(args.out, "frontend", device, args.model), payload, rows)


if __name__ == "__main__":
    main()
