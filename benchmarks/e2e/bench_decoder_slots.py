"""Streaming decoder with packed DiT caches (eager) vs the DiT slot pool (static shapes; CUDA graphs on a GPU).

    python benchmarks/e2e/bench_decoder_slots.py                                   # dummy:tiny, CPU
    python benchmarks/e2e/bench_decoder_slots.py --model dummy:full --device cuda --streams 1 4 8

For k streams fed together (one `decode_batch` per round, as the engine's decoder worker does),
each mode times the decoder's share of the first audio — the flow set-up on the first 5 ids and
the first 15-frame chunk (flow + HiFT) — then steady 48-frame chunks. Modes: `packed` (today's
dynamic caches, eager), `slots` (the pool; on CUDA its solves replay CUDA graphs) and, on CUDA,
`slots-eager` (the pool without graphs: separates the layout's cost from the graphs' gain). Each
mode first runs one untimed pass of the same shapes (allocator, Triton compiles, graph captures:
reported as `first_pass_s`). Mel differences vs `packed` (same ids, voices, noise) are reported
relative to the peak; they are reduction-order noise (~1e-6 in fp32). CPU numbers are ratios only.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decoder_batch import (add_decoder_arguments, decoder_payload, load_decoder, make_voices,  # noqa: E402
                                 random_ids)
from common import finish, progress, result_path, sync  # noqa: E402

from editx.engine.token2wav import Token2Wav, decode_batch  # noqa: E402
from editx.models.flow import mixed_len  # noqa: E402
from editx.models.flow.dit_slots import DiTSlots  # noqa: E402



def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_decoder_arguments(p, [1, 4])
    p.add_argument("--prompt-frames", type=int, default=500, help="prompt mel frames one slot holds")
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def feeds_for(decoder: Token2Wav, k: int, rounds: int, seed: int) -> list[list[list[int]]]:
    """Per round, per stream, the ids it gets: set-up (5), first chunk (25), then one chunk of each
    later size, then `rounds` steady chunks."""
    cfg = decoder.flow.cfg
    look = mixed_len(cfg.encoder.pre_lookahead_len)
    sizes = [mixed_len(c) for c in cfg.chunk_sizes]
    per_round = [look, sizes[0]] + sizes[1:] + [sizes[-1]] * rounds
    gen = torch.Generator().manual_seed(seed)
    return [[random_ids(n, gen) for _ in range(k)] for n in per_round]


def run_pass(decoder: Token2Wav, voices, feeds) -> tuple[list[float], list]:
    """Feed the rounds to fresh streams; returns (ms per round, the streams' recorded mels)."""
    streams = [decoder.stream(v, generator=torch.Generator().manual_seed(1000 + i), record=True)
               for i, v in enumerate(voices)]
    times = []
    for ids in feeds:
        sync(decoder.device)
        start = time.perf_counter()
        decode_batch([(s, x, False) for s, x in zip(streams, ids)])
        sync(decoder.device)
        times.append((time.perf_counter() - start) * 1e3)
    mels = [[mel for mel, _ in s.trace] for s in streams]
    for s in streams:
        s.close()
    return times, mels


def measure(decoder: Token2Wav, pool, voices, feeds, n_fixed: int) -> tuple[dict, list]:
    decoder.slots = pool
    start = time.perf_counter()
    run_pass(decoder, voices, feeds)  # untimed: compiles, allocator, graph captures
    first_pass = time.perf_counter() - start
    times, mels = run_pass(decoder, voices, feeds)
    steady = times[n_fixed:]
    result = {"setup_ms": times[0], "first_chunk_ms": times[1], "first_audio_decoder_ms": times[0] + times[1],
              "steady_chunk_round_ms": statistics.median(steady), "first_pass_s": first_pass}
    if pool is not None:
        result["graphs"], result["graph_error"] = len(pool.captured), pool.graph_error  # None: graphs worked
        assert pool.free_slots == pool.streams, "a stream kept its slot after close()"
    return result, mels


def rel_diff(a: list, b: list) -> float:
    worst = 0.0
    for xs, ys in zip(a, b):
        for x, y in zip(xs, ys):
            worst = max(worst, float((x - y).abs().max()) / max(float(y.abs().max()), 1e-6))
    return worst


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    decoder = load_decoder(args)
    flow, n_steps = decoder.flow, decoder.n_timesteps
    top = max(args.streams)
    pools = {"packed": None, "slots": DiTSlots.for_flow(flow, n_steps, top, args.prompt_frames,
                                                "cuda" if device.type == "cuda" else "static")}
    if device.type == "cuda":
        pools["slots-eager"] = DiTSlots.for_flow(flow, n_steps, top, args.prompt_frames, "static")
    progress(f"loaded the {args.model} decoder on {device}; pools of {top} streams: "
             f"{pools['slots'].nbytes / 2**30:.2f} GiB each")
    n_fixed = 1 + len(flow.cfg.chunk_sizes)  # set-up + one chunk of each size before the steady ones
    levels = []
    for k in args.streams:
        voices = make_voices(k, "ragged", args.prompt_ids, torch.Generator().manual_seed(k))
        feeds = feeds_for(decoder, k, args.rounds, seed=k)
        level, ref_mels = {"streams": k}, None
        for mode, pool in pools.items():
            level[mode], mels = measure(decoder, pool, voices, feeds, n_fixed)
            if ref_mels is None:
                ref_mels = mels
            else:
                level[mode]["max_rel_diff_mel_vs_packed"] = rel_diff(mels, ref_mels)
            progress(f"k={k} {mode}: first audio (decoder) {level[mode]['first_audio_decoder_ms']:.1f} ms, "
                     f"steady round {level[mode]['steady_chunk_round_ms']:.1f} ms")
        for mode in pools:
            level[mode]["first_audio_speedup_vs_packed"] = (level["packed"]["first_audio_decoder_ms"]
                                                            / level[mode]["first_audio_decoder_ms"])
            level[mode]["steady_speedup_vs_packed"] = (level["packed"]["steady_chunk_round_ms"]
                                                       / level[mode]["steady_chunk_round_ms"])
        levels.append(level)
    payload = decoder_payload("decoder_slots", args, decoder, slot_prompt_frames=args.prompt_frames, levels=levels)
    out = result_path(args.out, "decoder_slots", device, args.model)
    return finish(out, payload, [(f"k={lv['streams']:<3} {mode:<11}",
                  f"set-up {lv[mode]['setup_ms']:8.1f} ms  first chunk {lv[mode]['first_chunk_ms']:8.1f} ms  "
                  f"steady round {lv[mode]['steady_chunk_round_ms']:8.1f} ms  "
                  f"x{lv[mode]['first_audio_speedup_vs_packed']:.2f} first audio  "
                  f"x{lv[mode]['steady_speedup_vs_packed']:.2f} steady"
                  + (f"  mel diff {lv[mode]['max_rel_diff_mel_vs_packed']:.1e}" if mode != "packed" else ""))
                 for lv in levels for mode in pools])


if __name__ == "__main__":
    main()
