"""Per-stage backend benchmark: torch vs onnxruntime (vs TensorRT where present), ms per audio second → JSON.

    python benchmarks/export/bench_backends.py                                   # dummy:tiny on CPU
    python benchmarks/export/bench_backends.py --model dummy:full --device cuda --seconds 10

Every stage runs through the same objects the runtime uses (editx.export.backends: the torch
module's own method for `torch`, the backend objects on model views otherwise), in one process,
on the same inputs. Workloads for S seconds of audio (50 mel frames / 25 token frames per s):

| stage          | one call                                                  | ms per audio second     |
|----------------|-----------------------------------------------------------|-------------------------|
| `dit`          | one CFG velocity call (batch 2) over 50·S frames          | call × n_timesteps / S  |
| `dit_chunk`    | one streaming step: 54 frames (24 token frames + 3 look-  | call × n_timesteps /    |
|                | ahead) against a 3 s prompt + 96-frame cache              | 0.96 s of new audio     |
| `flow_encoder` | the conformer encoder over 25·S token frames              | call / S                |
| `hift`         | HiFT decode (mel + NSF source → waveform) of 50·S frames  | call / S                |
| `vq02`         | the vq02 encoder over S s of speech, upstream's 4-frame   | loop / S                |
|                | calls (16.7 LFR frames per s)                             |                         |

Before measuring it records what this machine offers (onnxruntime version and execution
providers, whether tensorrt imports and which version, the GPU) and, per stage and backend,
either the timing and the max |diff| against torch, or why it was not measured.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import environment, print_table, time_ms, write_json  # noqa: E402

from editx.config import BACKEND_NAMES, RuntimeConfig, parse_dtype  # noqa: E402
from editx.errors import EditXError  # noqa: E402
from editx.export.backends import RunnerFactory, stage_dtype, stage_views  # noqa: E402
from editx.loading.components import load_stage_models  # noqa: E402
from editx.models.flow import DiTCache  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MEL_PER_S, TOKENS_PER_S, LFR_PER_S = 50, 25, 100 / 6
STREAM_CHUNK_TOKENS, LOOKAHEAD, LEFT_CONTEXT, PROMPT_S = 24, 3, 96, 3.0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="dummy:tiny", help="dummy:tiny, dummy:full or an upstream install")
    p.add_argument("--device", default="cpu")
    p.add_argument("--decoder-dtype", default="float32", help="flow + HiFT dtype (TensorRT precision follows it)")
    p.add_argument("--seconds", type=float, default=4.0, help="audio seconds per workload")
    p.add_argument("--n-timesteps", type=int, default=10)
    p.add_argument("--backends", default=",".join(BACKEND_NAMES), help="comma list of backends to try")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/backends_<device>_<model>.json)")
    return p.parse_args(argv)


# -- what the machine offers -------------------------------------------------------------
def availability() -> dict:
    info: dict = {"cuda": torch.cuda.is_available()}
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError as exc:
        info["onnxruntime"] = None
        info["onnxruntime_error"] = str(exc)
    try:
        from editx.export.tensorrt import import_tensorrt

        info["tensorrt"] = import_tensorrt().__version__
    except EditXError as exc:
        info["tensorrt"] = None
        info["tensorrt_error"] = str(exc)
    return info


# -- workloads -----------------------------------------------------------------------------
def workloads(m: SimpleNamespace, seconds: float, device: torch.device, n_timesteps: int) -> dict:
    """stage -> (make call(stage_models) -> zero-arg fn, audio seconds one call stands for, note)."""
    g = torch.Generator().manual_seed(0)
    f, h, e = m.flow.decoder.estimator.cfg, m.hift.config, m.vq02.cfg
    dtype = m.flow.dtype

    def rand(*shape, scale=1.0, dt=dtype):
        return (scale * torch.randn(*shape, generator=g)).to(device, dt)

    frames = int(MEL_PER_S * seconds)
    dit_in = (rand(2, 80, frames, dt=torch.float32), None, rand(2, 80, frames), torch.rand(2, generator=g).to(device),
              rand(2, 80), rand(2, 80, frames))
    chunk = 2 * (STREAM_CHUNK_TOKENS + LOOKAHEAD)
    cached = int(MEL_PER_S * PROMPT_S) + LEFT_CONTEXT
    cache = DiTCache(k=rand(f.depth, 2, f.num_heads, cached, f.head_dim), v=rand(f.depth, 2, f.num_heads, cached, f.head_dim),
                     conv=rand(f.depth, 2, 2, f.hidden_size, 2))
    chunk_in = (rand(2, 80, chunk, dt=torch.float32), rand(2, 80, chunk), torch.rand(2, generator=g).to(device),
                rand(2, 80), rand(2, 80, chunk))
    tokens = int(TOKENS_PER_S * seconds)
    xs = rand(1, tokens, m.flow.cfg.encoder.input_size)
    mel = rand(1, h.in_channels, frames, scale=2.0, dt=m.hift.dtype) - 5
    source = rand(1, 1, frames * h.upsample_scale, scale=0.1, dt=torch.float32)
    lfr = int(LFR_PER_S * seconds)
    feats = rand(1, lfr, e.input_size, dt=m.vq02.after_norm.weight.dtype)
    calls = [4] * (lfr // 4) + ([lfr % 4] if lfr % 4 else [])
    per_chunk_s = 2 * STREAM_CHUNK_TOKENS / MEL_PER_S
    return {
        "dit": (lambda s: lambda: s.flow.decoder.estimator(*dit_in), seconds / n_timesteps,
                f"CFG batch 2 × {frames} frames"),
        "dit_chunk": (lambda s: lambda: s.flow.decoder.estimator.forward_chunk(*chunk_in, cache),
                      per_chunk_s / n_timesteps, f"{chunk} frames against {cached} cached"),
        "flow_encoder": (lambda s: lambda: s.flow.encoder(xs), seconds, f"{tokens} token frames"),
        "hift": (lambda s: lambda: s.hift.decode(mel, source), seconds, f"{frames} mel frames"),
        "vq02": (lambda s: lambda: s.vq02.encode(feats, calls), seconds, f"{len(calls)} calls of <= 4 LFR frames"),
    }


STAGE_OF = {"dit": "dit", "dit_chunk": "dit", "flow_encoder": "flow_encoder", "hift": "hift", "vq02": "vq02"}


def _diff(a, b) -> float:
    if isinstance(a, tuple):
        a, b = a[0], b[0]
    return float((a.float() - b.float()).abs().max())


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    config = RuntimeConfig(device=device, decoder_dtype=parse_dtype(args.decoder_dtype))
    torch.set_grad_enabled(False)
    flow, hift, vq02 = load_stage_models(args.model, config)
    models = SimpleNamespace(flow=flow, hift=hift, vq02=vq02)
    avail = availability()
    work = workloads(models, args.seconds, device, args.n_timesteps)
    factory = RunnerFactory(config)
    results, not_measured = [], []
    references = {name: make(models)() for name, (make, _, _) in work.items()}
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        views = models
        if backend != "torch":
            try:
                choice = {s: backend for s in set(STAGE_OF.values())}
                views = SimpleNamespace(**{**vars(models), **stage_views(
                    models, choice, lambda st, gr, mo: factory(backend, gr, mo, stage_dtype(config, st)))})
            except EditXError as exc:
                not_measured += [{"stage": s, "backend": backend, "reason": str(exc)} for s in work]
                print(f"[{backend}] not measured: {exc}", file=sys.stderr)
                continue
        for name, (make, audio_s, what) in work.items():
            fn = make(views)
            timing = time_ms(fn, device, warmup=2, repeats=args.repeats)
            row = {"stage": name, "backend": backend, "workload": what, "ms_per_call": timing["median_ms"],
                   "ms_per_audio_s": timing["median_ms"] / audio_s, "min_ms_per_call": timing["min_ms"],
                   "max_abs_diff_vs_torch": _diff(fn(), references[name])}
            results.append(row)
            print(f"{backend:>12} {name:<13} {row['ms_per_audio_s']:9.2f} ms/audio-s  ({what})", file=sys.stderr)
    env = {**environment(device), "load_average_1min": os.getloadavg()[0]}  # shared CPUs skew timings
    payload = {"benchmark": "export/bench_backends", "env": env, "availability": avail,
               "config": {"model": args.model, "device": str(device), "decoder_dtype": args.decoder_dtype,
                          "seconds": args.seconds, "n_timesteps": args.n_timesteps, "repeats": args.repeats},
               "results": results, "not_measured": not_measured}
    out = args.out or REPO / "benchmarks" / "results" / f"backends_{device.type}_{args.model.replace(':', '_')}.json"
    write_json(out, payload)
    print_table([(f"{r['stage']} / {r['backend']}", f"{r['ms_per_audio_s']:.2f} ms per audio second") for r in results]
                + [(f"{n['stage']} / {n['backend']}", "not measured") for n in not_measured])
    print(f"wrote {out}")
    return payload


if __name__ == "__main__":
    main()
