"""Streaming decoder micro-benchmark: k streams' chunks one push at a time vs one `decode_batch`.

    python benchmarks/e2e/bench_decoder_batch.py                                   # dummy:tiny, CPU
    python benchmarks/e2e/bench_decoder_batch.py --model dummy:full --device cuda --streams 1 4 16 64

k streams are brought to steady state (set-up, the 15- and 24-frame chunks and one 48-frame
chunk done; DiT caches at prompt + left context), then each timed round feeds every stream the
ids of one more 48-frame chunk (+ lookahead): `sequential` pushes them stream by stream
(today's engine), `batched` runs the same work as one `decode_batch` call on twin streams (same
voices, noise and NSF generators). Rounds of the two modes alternate, in the same process.
Reported per k and prompt layout: ms per chunk, ms per second of audio produced, the speedup,
and the largest differences between the two modes' flow mels and audio, relative to their peaks
(sanity checks: mels agree to ~1e-6 in fp32; the random dummy HiFT saturates, so one-ulp f0
differences of batched convs can show up as ~1e-2 in its audio; see tests/unit/test_batched_decoder.py).

Layouts: `ragged` gives every stream its own prompt length (different DiT/encoder cache lengths:
the ragged attention runs with key masks), `uniform` one prompt length for all (no padding: on
CUDA the DiT attention stays on the fused Triton kernel). CPU numbers are only ratios.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import environment, finish, progress, result_path, sync  # noqa: E402

from editx.config import RuntimeConfig  # noqa: E402
from editx.engine.token2wav import Token2Wav, Token2WavStream, VoiceConditioning, decode_batch  # noqa: E402
from editx.loading.components import load_stage_models  # noqa: E402
from editx.models.flow import mixed_len  # noqa: E402

NOISE_FRAMES = 30000  # as the runtime's start-noise buffer
OUTPUT_RATE = 24000


def add_decoder_arguments(p: argparse.ArgumentParser, streams: list[int]) -> None:
    """The options the decoder benchmarks share (model, device, dtype, streams, rounds, prompt length)."""
    p.add_argument("--model", default="dummy:tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--decoder-dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--streams", type=int, nargs="+", default=streams)
    p.add_argument("--rounds", type=int, default=3, help="timed 48-frame chunks per stream and mode")
    p.add_argument("--prompt-ids", type=int, default=150, help="prompt mixed ids (ragged: 0.6x .. 1.4x this)")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_decoder_arguments(p, [1, 4, 16])
    p.add_argument("--layouts", nargs="+", default=["ragged", "uniform"], choices=["ragged", "uniform"])
    p.add_argument("--n-timesteps", type=int, default=None, help="ODE steps (default: the flow config's, 10)")
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def random_ids(n: int, gen: torch.Generator) -> list[int]:
    """Valid mixed ids: per 5-id group two vq02 codes then three 1024 + vq06 codes."""
    vq02 = torch.randint(0, 1024, (n,), generator=gen)
    vq06 = torch.randint(1024, 5120, (n,), generator=gen)
    return torch.where(torch.arange(n) % 5 < 2, vq02, vq06).tolist()


def make_voices(k: int, layout: str, prompt_ids: int, gen: torch.Generator) -> list[VoiceConditioning]:
    voices = []
    for i in range(k):
        n = prompt_ids if layout == "uniform" or k == 1 else int(prompt_ids * (0.6 + 0.8 * i / (k - 1)))
        frames = 2 * 3 * -(-n // 5)
        voices.append(VoiceConditioning.from_features(random_ids(n, gen), torch.randn(1, frames, 80, generator=gen) - 4,
                                                      torch.randn(1, 192, generator=gen)))
    return voices


def steady_streams(decoder: Token2Wav, voices: list[VoiceConditioning],
                   feeds: list[list[int]]) -> list[Token2WavStream]:
    """Streams past their set-up, 15-, 24- and first 48-frame chunks (one push each, batched)."""
    streams = [decoder.stream(v, generator=torch.Generator().manual_seed(1000 + i), record=True)
               for i, v in enumerate(voices)]
    decode_batch([(s, ids, False) for s, ids in zip(streams, feeds)])
    return streams


def measure(decoder: Token2Wav, voices: list[VoiceConditioning], rounds: int, seed: int) -> dict:
    cfg = decoder.flow.cfg
    look = mixed_len(cfg.encoder.pre_lookahead_len)
    steady = mixed_len(cfg.chunk_sizes[-1])  # ids per steady-state chunk
    warm_ids = look + sum(mixed_len(c) for c in cfg.chunk_sizes)  # set-up, then one chunk of each size
    gen = torch.Generator().manual_seed(seed)
    k = len(voices)
    warm = [random_ids(warm_ids, gen) for _ in range(k)]
    sequential, batched = steady_streams(decoder, voices, warm), steady_streams(decoder, voices, warm)
    times = {"sequential": [], "batched": []}
    audio_s, chunks, worst, worst_mel = 0.0, 0, 0.0, 0.0
    for r in range(rounds + 1):  # round 0 warms both modes up (allocator, kernels), untimed
        feeds = [random_ids(steady, gen) for _ in range(k)]
        sync(decoder.device)
        start = time.perf_counter()
        outs_seq = [s.push(ids) for s, ids in zip(sequential, feeds)]
        sync(decoder.device)
        mid = time.perf_counter()
        outs_bat = decode_batch([(s, ids, False) for s, ids in zip(batched, feeds)])
        sync(decoder.device)
        end = time.perf_counter()
        for a, b in zip(outs_seq, outs_bat):
            assert [c.numel() for c in a] == [c.numel() for c in b], "decode_batch chunking differs from push"
            for x, y in zip(a, b):
                worst = max(worst, _rel_diff(x, y))
        for a, b in zip(sequential, batched):
            worst_mel = max([worst_mel] + [_rel_diff(x, y) for (x, _), (y, _) in zip(a.trace, b.trace)])
            a.trace.clear()
            b.trace.clear()
        if r == 0:
            continue
        times["sequential"].append((mid - start) * 1e3)
        times["batched"].append((end - mid) * 1e3)
        chunks += sum(len(a) for a in outs_seq)
        audio_s += sum(c.numel() for a in outs_seq for c in a) / OUTPUT_RATE
    per_round_chunks, per_round_audio = chunks / rounds, audio_s / rounds
    result = {"streams": k, "rounds": rounds, "chunks_per_round": per_round_chunks,
              "audio_s_per_round": per_round_audio, "max_rel_diff_audio": worst, "max_rel_diff_mel": worst_mel}
    for mode, samples in times.items():
        ms = statistics.median(samples)
        result[mode] = {"round_ms_median": ms, "round_ms_min": min(samples),
                        "ms_per_chunk": ms / per_round_chunks, "ms_per_audio_s": ms / per_round_audio}
    result["speedup"] = result["sequential"]["round_ms_median"] / result["batched"]["round_ms_median"]
    return result


def _rel_diff(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x.float() - y.float()).abs().max()) / max(float(x.float().abs().max()), 1e-6)


def load_decoder(args: argparse.Namespace, n_timesteps: int | None = None) -> Token2Wav:
    """The model's flow + HiFT on args.device in args.decoder_dtype, with the runtime's kind of noise."""
    device = torch.device(args.device)
    torch.set_grad_enabled(False)
    config = RuntimeConfig(device=device, decoder_dtype=getattr(torch, args.decoder_dtype))
    flow, hift, _ = load_stage_models(args.model, config)
    noise = torch.randn(1, flow.cfg.output_size, NOISE_FRAMES, generator=torch.Generator().manual_seed(0))
    return Token2Wav(flow, hift, noise.to(device), n_timesteps or flow.cfg.n_timesteps)


def decoder_payload(name: str, args: argparse.Namespace, decoder: Token2Wav, **fields) -> dict:
    """The result header the decoder benchmarks share (what ran, where, with which settings) + `fields`."""
    return {"benchmark": f"e2e/{name}", "model": args.model, "env": environment(decoder.device),
            "decoder_dtype": args.decoder_dtype, "n_timesteps": decoder.n_timesteps, "prompt_ids": args.prompt_ids,
            **fields}


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    decoder = load_decoder(args, args.n_timesteps)
    flow = decoder.flow
    progress(f"loaded the {args.model} decoder on {device}")
    levels = []
    for layout in args.layouts:
        for k in args.streams:
            voices = make_voices(k, layout, args.prompt_ids, torch.Generator().manual_seed(k))
            levels.append({"layout": layout, **measure(decoder, voices, args.rounds, seed=k)})
            progress(f"{layout} k={k}: x{levels[-1]['speedup']:.2f}")
    payload = decoder_payload("decoder_batch", args, decoder, chunk_frames=flow.cfg.chunk_sizes[-1], levels=levels)
    out = result_path(args.out, "decoder_batch", device, args.model)
    return finish(out, payload, [(f"{lv['layout']:<7} k={lv['streams']:<3}",
                  f"sequential {lv['sequential']['ms_per_chunk']:8.1f} ms/chunk "
                  f"{lv['sequential']['ms_per_audio_s']:8.1f} ms/audio s | batched "
                  f"{lv['batched']['ms_per_chunk']:8.1f} ms/chunk {lv['batched']['ms_per_audio_s']:8.1f} ms/audio s"
                  f" | x{lv['speedup']:.2f}  max rel diff mel {lv['max_rel_diff_mel']:.1e} "
                  f"audio {lv['max_rel_diff_audio']:.1e}")
                 for lv in levels])


if __name__ == "__main__":
    main()
