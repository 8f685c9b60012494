"""Where one streaming decoder chunk spends its time: torch.profiler over one stream.

    python benchmarks/e2e/profile_decoder.py                                       # dummy:tiny, CPU
    python benchmarks/e2e/profile_decoder.py --model dummy:full --device cuda      # GPU check

A stream is brought to steady state (set-up, the 15-, 24- and one 48-frame chunk), then a fresh
stream's set-up and the steady stream's next 48-frame chunks run under the profiler. Stages are
labelled (`flow.setup`, `flow.encoder`, `flow.dit_solve`, `hift.vocode`), so the table shows how the
decoder's time splits between them (the set-up's own encoder and DiT solve are also counted under
`flow.encoder` / `flow.dit_solve`), and the top operators by self time (device time on CUDA)
show what inside them dominates (matmul, attention, conv, copies of the DiT caches, ...).
Writes JSON: stage totals and the top operators.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_decoder_batch import NOISE_FRAMES, make_voices, random_ids  # noqa: E402
from common import environment, finish, progress, result_path, sync  # noqa: E402

from editx.config import RuntimeConfig  # noqa: E402
from editx.engine import token2wav  # noqa: E402
from editx.engine.token2wav import Token2Wav  # noqa: E402
from editx.loading.components import load_stage_models  # noqa: E402
from editx.models.flow import mixed_len  # noqa: E402
from editx.models.flow.dit_slots import DiTSlots  # noqa: E402

STAGES = ("flow.setup", "flow.encoder", "flow.dit_solve", "hift.vocode")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="dummy:tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--decoder-dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--prompt-ids", type=int, default=150, help="prompt mixed ids (~3.6 s of prompt audio)")
    p.add_argument("--chunks", type=int, default=3, help="profiled 48-frame chunks")
    p.add_argument("--top", type=int, default=25, help="operators listed")
    p.add_argument("--slots", choices=["off", "on"], default="off",
                   help="on: DiT caches in a slot pool (static shapes; its solves replay CUDA graphs on a GPU)")
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def labelled(obj, method: str, label: str) -> None:
    """Wrap obj.method (an instance's method or a module's function) so every call shows up in the
    profile as `label`."""
    inner = getattr(obj, method)

    def wrapper(*args, **kwargs):
        with record_function(label):
            return inner(*args, **kwargs)

    setattr(obj, method, wrapper)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.set_grad_enabled(False)
    flow, hift, _ = load_stage_models(args.model, RuntimeConfig(device=device,
                                                                decoder_dtype=getattr(torch, args.decoder_dtype)))
    noise = torch.randn(1, flow.cfg.output_size, NOISE_FRAMES, generator=torch.Generator().manual_seed(0))
    decoder = Token2Wav(flow, hift, noise.to(device), flow.cfg.n_timesteps)
    if args.slots == "on":
        mode = "cuda" if device.type == "cuda" else "static"
        decoder.slots = DiTSlots.for_flow(flow, flow.cfg.n_timesteps, 2, 500, mode)
    progress(f"loaded the {args.model} decoder on {device}")
    gen = torch.Generator().manual_seed(0)
    voice_a, voice_b = make_voices(2, "uniform", args.prompt_ids, gen)
    cfg = flow.cfg
    look, steady = mixed_len(cfg.encoder.pre_lookahead_len), mixed_len(cfg.chunk_sizes[-1])
    stream = decoder.stream(voice_a, generator=torch.Generator().manual_seed(1))
    stream.push(random_ids(look + sum(mixed_len(c) for c in cfg.chunk_sizes), gen))  # steady state
    stream.push(random_ids(steady, gen))  # one more untimed round: warm kernels and allocator
    sync(device)

    labelled(token2wav, "setup_stream", "flow.setup")  # the whole set-up (its encoder + DiT solve nest inside)
    labelled(token2wav, "setup_stream_batch", "flow.setup")  # (the set-up's form with a slot pool)
    labelled(flow.encoder, "forward_chunk", "flow.encoder")
    labelled(flow.encoder, "forward_chunk_ragged", "flow.encoder")
    labelled(flow.decoder, "solve_chunk", "flow.dit_solve")
    if decoder.slots is not None:
        labelled(decoder.slots, "solve", "flow.dit_solve")
    labelled(hift, "vocode_chunk", "hift.vocode")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    fresh = decoder.stream(voice_b, generator=torch.Generator().manual_seed(2))
    with profile(activities=activities) as prof:
        fresh.push(random_ids(look, gen))  # set-up only (emits nothing)
        for _ in range(args.chunks):
            stream.push(random_ids(steady, gen))
        sync(device)
    progress("profiled")

    on_device = device.type == "cuda"
    events = prof.key_averages()

    def self_ms(e) -> float:
        return (e.self_device_time_total if on_device else e.self_cpu_time_total) / 1e3

    def total_ms(e) -> float:
        return (e.device_time_total if on_device else e.cpu_time_total) / 1e3

    stages = {e.key: {"calls": e.count, "total_ms": total_ms(e)} for e in events if e.key in STAGES}
    ops = sorted((e for e in events if e.key not in STAGES), key=self_ms, reverse=True)[: args.top]
    top = [{"op": e.key, "calls": e.count, "self_ms": self_ms(e)} for e in ops]
    payload = {"benchmark": "e2e/profile_decoder", "model": args.model, "env": environment(device),
               "decoder_dtype": args.decoder_dtype, "prompt_ids": args.prompt_ids, "slots": args.slots,
               "profiled": {"setups": 1, "chunks_48_frames": args.chunks},
               "time": "device (CUDA kernels)" if on_device else "CPU", "stages": stages, "top_ops": top}
    out = result_path(args.out, "profile_decoder", device, args.model + ("_slots" if args.slots == "on" else ""))
    return finish(out, payload, [(name, f"{s['total_ms']:9.2f} ms in {s['calls']} calls") for name, s in stages.items()]
                + [(t["op"][:60], f"{t['self_ms']:9.2f} ms self, {t['calls']} calls") for t in top])


if __name__ == "__main__":
    main()
