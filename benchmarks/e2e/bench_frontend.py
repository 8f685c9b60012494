"""Front end of a cold voice (prompt audio -> codes, mel, x-vector), stage by stage: the vq02 features
piece by piece vs in one fbank call, and the vq02 encoder run call by call (upstream's loop,
`encode_chunked`) vs layer by layer (`encode`), in the same run on the same inputs.

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
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import DEFAULT_PROMPT, environment, finish, progress, result_path, sync  # noqa: E402

from editx import Runtime  # noqa: E402
from editx.engine.voice import encode_voice  # noqa: E402
from editx.frontend.audio_io import load_audio  # noqa: E402
from editx.frontend.prompt_audio import preprocess_prompt  # noqa: E402
from editx.frontend.vq02_features import (Vq02FrontendState, extract_vq02_features,  # noqa: E402
                                          extract_vq02_piece)
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


def feature_paths(comps, wav16: torch.Tensor, rounds: int) -> dict:
    """vq02 features (fbank, LFR, CMVN; CPU) piece by piece through the streaming step API vs all
    pieces' fbank in one call (`extract_vq02_features`), alternating; both with the same dither seed."""
    x = wav16.reshape(-1)
    pieces = [x[i:i + comps.vq02_frontend.piece_samples] for i in range(0, x.shape[0], comps.vq02_frontend.piece_samples)]

    def piece_by_piece():
        state, gen = Vq02FrontendState(), torch.Generator().manual_seed(0)
        for i, piece in enumerate(pieces):
            _, state = extract_vq02_piece(piece, state, comps.cmvn, is_final=i == len(pieces) - 1, dither=1.0,
                                          generator=gen, config=comps.vq02_frontend)

    def one_call():
        extract_vq02_features(x, comps.cmvn, dither=1.0, generator=torch.Generator().manual_seed(0),
                              config=comps.vq02_frontend)

    paths = {"piece_by_piece": piece_by_piece, "one_call": one_call}
    times: dict[str, list[float]] = {name: [] for name in paths}
    one_call(), piece_by_piece()  # warm-up
    for r in range(rounds):
        for name in (list(paths) if r % 2 == 0 else list(reversed(paths))):
            times[name].append(timed(paths[name], torch.device("cpu"))[1])
    result = {name: summary(t) for name, t in times.items()}
    result["speedup"] = result["piece_by_piece"]["median_ms"] / result["one_call"]["median_ms"]
    return result


def encoder_paths(comps, feats: torch.Tensor, lengths: list[int], rounds: int, device: torch.device) -> dict:
    """Both vq02 encoder paths on the same features, alternating; their difference in outputs and codes."""
    enc = comps.vq02
    paths = {"call_by_call": enc.encode_chunked, "layerwise": enc.encode}
    times: dict[str, list[float]] = {name: [] for name in paths}
    outs = {}
    with torch.inference_mode():
        for name, fn in paths.items():  # warm-up (allocator, kernels) before timing
            outs[name] = fn(feats, lengths)
        for r in range(rounds):
            for name in (list(paths) if r % 2 == 0 else list(reversed(paths))):
                outs[name], ms = timed(lambda: paths[name](feats, lengths), device)
                times[name].append(ms)
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
    runs: dict[str, list] = {"serial": [], "parallel": []}

    def run(parallel: bool):
        return encode_voice(rt.components, wav, sr, dither=rt.config.vq02_dither, parallel=parallel,
                            generator=torch.Generator().manual_seed(0), resampler=rt.config.resampler)

    run(True)  # warm-up: the pool's threads, allocator
    for r in range(rounds):
        for mode in (("serial", "parallel") if r % 2 == 0 else ("parallel", "serial")):
            voice, ms = timed(lambda: run(mode == "parallel"), device)
            runs[mode].append((ms, {k.removesuffix("_s") + "_ms": v * 1e3 for k, v in voice.timings.items()}))
    result = {}
    for mode, samples in runs.items():
        stages = [s for _, s in samples]
        result[mode] = {**summary([ms for ms, _ in samples]),
                        "stages_median_ms": {k: statistics.median(s[k] for s in stages) for k in stages[0]}}
    result["speedup"] = result["serial"]["median_ms"] / result["parallel"]["median_ms"]
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    rt = Runtime.from_pretrained(args.model, device=args.device)
    comps = rt.components
    progress(f"loaded {args.model} on {device}")
    wav, sr = load_audio(args.prompt_audio, what="prompt audio")
    prompt = preprocess_prompt(wav, sr, comps.mel, resampler=rt.config.resampler)
    features = feature_paths(comps, prompt.wav16_trimmed, max(args.rounds, 5))
    progress(f"vq02 features: piece by piece {features['piece_by_piece']['median_ms']:.1f} ms, one fbank call "
             f"{features['one_call']['median_ms']:.1f} ms (x{features['speedup']:.2f})")
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
               "prompt_audio_s": wav.shape[-1] / sr, "vq02_dtype": str(dtype), "vq02_features": features,
               "vq02_encoder": encoder,
               "encode_voice": chains}
    rows = [("vq02 features, piece by piece", f"{features['piece_by_piece']['median_ms']:9.1f} ms"),
            ("vq02 features, one fbank call", f"{features['one_call']['median_ms']:9.1f} ms  (x{features['speedup']:.2f})"),
            ("vq02 encoder, call by call", f"{encoder['call_by_call']['median_ms']:9.1f} ms"),
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
