"""Streaming benchmark: TTFA, RTF, underruns and throughput vs concurrency -> JSON + SVG plot.

    python benchmarks/e2e/bench_stream.py --model dummy:tiny                         # CPU, small sweep
    python benchmarks/e2e/bench_stream.py --model dummy:full --device cuda --concurrency 1 4 16 64

For each concurrency level N, N clone requests are submitted at once from N threads and
consumed as streams. Per request: `ttfa_ms` (submit -> first audio chunk), `rtf` (wall time to
the last chunk / audio seconds), `underruns` (chunks that arrive after real-time playback of
everything before them, playback starting at the first chunk). Per level: p50/p90/p99 TTFA,
mean RTF, total `audio_s_per_s`. Each level runs with a cold voice (front end computed once for all)
and a cached voice (front end skipped); `--voices ... distinct` adds a level where every request brings
its own new voice (n front ends, n LLM prefixes). The offline path (whole utterance, then audio) is measured
in the same run at concurrency 1 as the baseline.
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import (DEFAULT_PROMPT, PROMPT_TEXT, environment,  # noqa: E402
                    print_table, progress, result_path, write_json, write_svg_plot)

from editx import Runtime  # noqa: E402
from editx.models.interleave import llm_ids_to_mixed  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog."


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="dummy:tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None)
    p.add_argument("--prompt-audio", default=str(DEFAULT_PROMPT))
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--tokens", type=int, default=150, help="max audio tokens per request (41.67 per second)")
    p.add_argument("--overlap-decoder", choices=["on", "off"], default="on",
                   help="run decoder items beside the LLM steps (RuntimeConfig.overlap_decoder)")
    p.add_argument("--no-plot", action="store_true", help="write only the JSON (no SVG plot)")
    p.add_argument("--chunk-frames", default=None, metavar="N,N,...",
                   help="decoder chunk sizes in token frames (RuntimeConfig.stream_chunk_frames; default 15,24,48)")
    p.add_argument("--voices", nargs="+", choices=VOICES, default=["cold", "cached"],
                   help="voice modes per level: cold (one voice, cache cleared), cached, distinct (a new voice "
                        "per request)")
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def one_stream(rt: Runtime, prompt, seed: int, tokens: int, record: list) -> None:
    start = time.perf_counter()
    arrivals, durations = [], []
    stream = rt.stream_clone(prompt, PROMPT_TEXT, TEXT, seed=seed, sampling=rt.default_sampling(max_new_tokens=tokens))
    for chunk in stream:
        if chunk.samples.size:
            arrivals.append(time.perf_counter())
            durations.append(chunk.samples.size / chunk.sample_rate)
    end = time.perf_counter()
    underruns, due = 0, None
    for t, d in zip(arrivals, durations):
        due = t if due is None else due
        if t > due + 1e-3:  # this chunk arrived after the previous audio finished playing
            underruns += 1
            due = t
        due += d
    audio = sum(durations)
    record.append({"ttfa_ms": (arrivals[0] - start) * 1e3 if arrivals else float("nan"),
                   "rtf": (end - start) / audio if audio else float("nan"), "underruns": underruns,
                   "audio_s": audio, "chunks": len(arrivals),
                   "ttfa_parts_ms": ttfa_parts(start, stream.request.timeline)})


# Where the time to first audio goes: front end (until the engine has the request), prefill +
# queueing (until its first token), decoding the ids the first chunk needs (5 set-up + 30 chunk
# ids upstream), then the decoder's set-up/chunk/vocoder work and the hand-over to the caller.
TTFA_PARTS = (("front_end", "submitted"), ("to_first_token", "first_token"),
              ("first_chunk_tokens", "first_chunk_dispatched"), ("decoder", "first_audio"))


def ttfa_parts(start: float, timeline: dict) -> dict:
    parts, prev = {}, start
    for name, stamp in TTFA_PARTS:
        if stamp not in timeline:
            break
        parts[name] = (timeline[stamp] - prev) * 1e3
        prev = timeline[stamp]
    return parts


VOICES = ("cold", "cached", "distinct")


def level_prompts(rt: Runtime, prompt: bytes, n: int, voice: str) -> list:
    """The n requests' prompt audio. "cold": one voice for all, the voice cache cleared (its front end
    runs once, the other requests wait for it); "cached": the same voice encoded beforehand; "distinct":
    every request its own new voice (the prompt at a slightly different gain: another content hash, so
    its own front end and LLM prefix), as when each client uploads its own recording."""
    rt.voice_cache.clear()
    if voice == "cached":
        rt.encode_voice(prompt)
    if voice != "distinct":
        return [prompt] * n
    samples, sr = sf.read(io.BytesIO(prompt), dtype="float32", always_2d=True)
    return [((samples.T * np.float32(1 - 1e-3 * (i + 1))).copy(), sr) for i in range(n)]


def run_level(rt: Runtime, prompt, n: int, tokens: int, voice: str) -> dict:
    prompts = level_prompts(rt, prompt, n, voice)
    cache = rt.voice_cache
    computed_before = cache.misses - cache.joined  # misses that ran the front end themselves
    records: list[dict] = []
    threads = [threading.Thread(target=one_stream, args=(rt, prompts[i], 1000 + i, tokens, records))
               for i in range(n)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    # A random-weight model may stop after a few ids (EOS drawn early: no audio frame, an empty last chunk):
    # such a request has no first audio and no RTF, so it is counted, not averaged in as NaN.
    voiced = [r for r in records if r["audio_s"] > 0]
    ttfa = [r["ttfa_ms"] for r in voiced]
    parts = {name: statistics.median(r["ttfa_parts_ms"][name] for r in voiced if name in r["ttfa_parts_ms"])
             for name, _ in TTFA_PARTS if any(name in r["ttfa_parts_ms"] for r in voiced)}
    return {"concurrency": n, "voice": voice, "front_ends_run": cache.misses - cache.joined - computed_before,
            "ttfa_ms_p50": percentile(ttfa, 50), "ttfa_ms_p90": percentile(ttfa, 90),
            "ttfa_ms_p99": percentile(ttfa, 99), "ttfa_parts_ms_p50": parts,
            "rtf_mean": statistics.mean(r["rtf"] for r in voiced), "empty_requests": len(records) - len(voiced),
            "underruns": sum(r["underruns"] for r in records), "audio_s_per_s": sum(r["audio_s"] for r in records) / wall,
            "wall_s": wall}


def streaming_vs_offline(rt: Runtime, prompt, tokens: int) -> dict:
    """How far streaming deviates from upstream's offline decoder fed the same tokens (different noise
    slices and chunked attention by design; spec §6). Compared on the flow's mel (the part the chunk
    scheme changes): max |diff| and RMS of the difference relative to the offline mel's RMS. The
    waveforms are compared too, but they also differ by the vocoder's independent NSF noise draws
    (per chunk vs one per utterance), which dominates with random weights."""
    stream = rt.stream_clone(prompt, PROMPT_TEXT, TEXT, seed=2000, sampling=rt.default_sampling(max_new_tokens=tokens))
    streamed_audio = np.concatenate([c.samples for c in stream])
    mixed = llm_ids_to_mixed(stream.request.generated[:-1])  # upstream drops the last generated id
    cond = rt.encode_voice(prompt).conditioning
    replay = rt.decoder.stream(cond, record=True)  # the same ids one per call, keeping each chunk's mel
    for i, t in enumerate(mixed):
        replay.push([t], last=i == len(mixed) - 1)
    streamed_mel = torch.cat([mel for mel, _ in replay.trace], dim=2)[0].float().cpu().numpy()
    gen = torch.Generator(device=rt.config.device).manual_seed(2001)
    offline_audio, offline_mel = rt.decoder.offline(torch.tensor(mixed), cond, generator=gen)
    offline_mel, offline_audio = offline_mel[0].float().cpu().numpy(), offline_audio.cpu().numpy()

    def compare(a, b) -> dict:
        n = min(a.shape[-1], b.shape[-1])
        d = a[..., :n] - b[..., :n]
        return {"max_abs_diff": float(np.abs(d).max()),
                "rel_rms_diff": float(np.sqrt((d ** 2).mean() / max((b[..., :n] ** 2).mean(), 1e-12))),
                "lengths": [int(a.shape[-1]), int(b.shape[-1])]}

    return {"mel": compare(streamed_mel, offline_mel), "audio_incl_nsf_noise": compare(streamed_audio, offline_audio)}


def offline_baseline(rt: Runtime, prompt, tokens: int) -> dict:
    start = time.perf_counter()
    audio = rt.clone(prompt, PROMPT_TEXT, TEXT, seed=1000, sampling=rt.default_sampling(max_new_tokens=tokens),
                     stream=False)
    wall = time.perf_counter() - start
    return {"ttfa_ms": wall * 1e3, "rtf": wall / audio.duration, "audio_s": audio.duration}


def main(argv=None) -> dict:
    args = parse_args(argv)
    rt = Runtime.from_pretrained(args.model, device=args.device, dtype=args.dtype,
                                 overlap_decoder=args.overlap_decoder == "on", stream_chunk_frames=args.chunk_frames)
    progress(f"loaded {args.model} on {rt.config.device}")
    start = time.perf_counter()
    rt.warmup()  # CUDA graphs of every LLM batch bucket and decoder chunk bucket: not inside a measured level
    progress(f"decoder warm-up: {time.perf_counter() - start:.1f} s, {rt.engine_stats()['decoder_graphs']} graphs")
    prompt = Path(args.prompt_audio).read_bytes()
    # Warm-up at full length on both paths: Triton compiles and CUDA-graph captures (one per decode
    # width bucket) happen here, not inside the first measured request.
    warm = rt.default_sampling(max_new_tokens=args.tokens)
    rt.clone(prompt, PROMPT_TEXT, TEXT, seed=0, sampling=warm)
    progress("warm-up: streamed clone done")
    rt.clone(prompt, PROMPT_TEXT, TEXT, seed=0, sampling=warm, stream=False)
    progress("warm-up: offline clone done")
    baseline = offline_baseline(rt, prompt, args.tokens)
    progress(f"offline c=1: first audio {baseline['ttfa_ms']:.1f} ms")
    out = result_path(args.out, "stream", rt.config.device, args.model)
    payload = {"benchmark": "e2e/stream", "model": args.model, "env": environment(rt.config.device),
               "overlap_decoder": rt.config.overlap_decoder, "chunk_frames": list(rt.decoder.flow.cfg.chunk_sizes),
               "decoder_slots": rt.engine_stats()["decoder_slots"],
               "tokens_per_request": args.tokens, "runtime": rt.describe(),  # what ran: graphs, kernels, pool
               "levels": [], "offline_baseline_c1": baseline, "complete": False}
    levels = payload["levels"]
    for n in args.concurrency:
        for voice in args.voices:
            levels.append(run_level(rt, prompt, n, args.tokens, voice))
            lv = levels[-1]
            split = ", ".join(f"{k} {v:.0f}" for k, v in lv["ttfa_parts_ms_p50"].items())
            progress(f"c={n} {lv['voice']}: ttfa p50 {lv['ttfa_ms_p50']:.1f} ms ({split}), "
                     f"{lv['audio_s_per_s']:.2f} audio s/s")
            write_json(out, payload)  # after every level: a run stopped early keeps what it measured
    deviation = streaming_vs_offline(rt, prompt, args.tokens)
    mel = deviation["mel"]
    progress(f"streaming vs offline, same tokens: mel max |diff| {mel['max_abs_diff']:.4f}, "
             f"relative RMS {mel['rel_rms_diff']:.4f}")
    payload.update(complete=True, streaming_vs_offline=deviation, engine=rt.engine_stats())
    write_json(out, payload)
    if not args.no_plot:
        mode = "cached" if "cached" in args.voices else args.voices[0]
        shown = [lv for lv in levels if lv["voice"] == mode]
        write_svg_plot(out.with_suffix(".svg"), "concurrency",
                       {"TTFA p50 (ms)": [(lv["concurrency"], lv["ttfa_ms_p50"]) for lv in shown],
                        "TTFA p99 (ms)": [(lv["concurrency"], lv["ttfa_ms_p99"]) for lv in shown],
                        "audio s per s (x100)": [(lv["concurrency"], 100 * lv["audio_s_per_s"]) for lv in shown]},
                       title=f"editx streaming ({mode} voice), {args.model} on {payload['env']['device_name']}")
    rows = [(f"c={lv['concurrency']:<3} {lv['voice']:<8}",
             f"ttfa p50 {lv['ttfa_ms_p50']:8.1f} ms  p99 {lv['ttfa_ms_p99']:8.1f} ms  rtf {lv['rtf_mean']:.3f}  "
             f"underruns {lv['underruns']:3d}  audio s/s {lv['audio_s_per_s']:.2f}") for lv in levels]
    rows.append(("offline c=1", f"first audio {baseline['ttfa_ms']:8.1f} ms  rtf {baseline['rtf']:.3f}"))
    print_table(rows)
    print(f"wrote {out}" + ("" if args.no_plot else f" and {out.with_suffix('.svg')}"))
    return payload


if __name__ == "__main__":
    main()
