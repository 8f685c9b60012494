"""HTTP server overhead: TTFA and throughput through `editx serve` vs the in-process streaming API.

    python benchmarks/e2e/bench_server.py --model dummy:tiny                       # CPU (ratios only)
    python benchmarks/e2e/bench_server.py --model dummy:full --device cuda --concurrency 1 8 32

Four ways to run the same clone requests, one after another in one run:
  * `api`       `Runtime.stream_clone` in this process (the baseline);
  * `http`      POST /v1/clone to an `editx serve` subprocess with the prompt audio inlined as base64
                (upload, base64 + audio decode on every request; the voice cache skips the front end);
  * `http_voice` the same with a `voice_id` from POST /v1/voices (no upload per request);
  * `http_openai` POST /v1/audio/speech (OpenAI's API) naming that voice, uploaded with its transcript.
At each concurrency level N, N requests start at once from N threads; `ttfa_ms` is the time to the
first audio samples (pcm16 body bytes over HTTP, the first non-empty chunk in process). Every path is
warmed first with one request (voice cached, graphs captured), so levels compare steady serving.
The server runs in its own process (as deployed); the client threads here only read sockets.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import DEFAULT_PROMPT, PROMPT_TEXT, environment, finish, progress, result_path  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog."
RATE = 24000


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="dummy:tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--prompt-audio", default=str(DEFAULT_PROMPT))
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    p.add_argument("--tokens", type=int, default=120, help="max audio tokens per request (41.67 per second)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of simultaneous requests per level")
    p.add_argument("--startup-timeout", type=float, default=600, help="seconds to wait for `editx serve`")
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------
# one level: N requests at once, each returning (ttfa_s, total_s, audio_s)
# ---------------------------------------------------------------------------------------
def run_level(n: int, one_request, rounds: int) -> dict:
    """`rounds` rounds of n simultaneous requests; TTFA over all of them, throughput over all rounds."""
    results: list = []
    wall = 0.0
    for r in range(rounds):
        batch: list = [None] * n
        barrier = threading.Barrier(n)

        def worker(i: int) -> None:
            barrier.wait()
            batch[i] = one_request(r * n + i)

        start = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall += time.perf_counter() - start
        results.extend(batch)
    ttfa = sorted(r[0] * 1e3 for r in results)
    audio = sum(r[2] for r in results)
    return {"concurrency": n, "requests": len(results), "ttfa_ms_p50": statistics.median(ttfa),
            "ttfa_ms_max": ttfa[-1], "rtf_mean": statistics.mean(r[1] / max(r[2], 1e-9) for r in results),
            "audio_s_per_s": audio / wall, "audio_s": audio}


def api_request(rt, prompt: Path, tokens: int):
    sampling = rt.default_sampling(max_new_tokens=tokens)

    def one(i: int):
        start = time.perf_counter()
        first, samples = None, 0
        for chunk in rt.stream_clone(prompt, PROMPT_TEXT, TEXT, seed=i, sampling=sampling):
            if first is None and chunk.samples.size:
                first = time.perf_counter() - start
            samples += chunk.samples.size
        return first, time.perf_counter() - start, samples / RATE

    return one


def clone_body(audio_field: dict, tokens: int):
    """POST /v1/clone bodies (pcm16) with the prompt audio inline or by voice_id."""
    return "/v1/clone", lambda i: {**audio_field, "prompt_text": PROMPT_TEXT, "text": TEXT, "seed": i,
                                   "format": "pcm16", "sampling": {"max_new_tokens": tokens}}


def speech_body(voice: str, tokens: int):
    """POST /v1/audio/speech bodies (OpenAI's API, pcm) for an uploaded voice with its transcript."""
    return "/v1/audio/speech", lambda i: {"model": "editx", "input": TEXT, "voice": voice, "response_format": "pcm",
                                          "seed": i, "sampling": {"max_new_tokens": tokens}}


def http_request(base: str, endpoint_and_body):
    endpoint, body_of = endpoint_and_body

    def one(i: int):
        start = time.perf_counter()
        first, size = None, 0
        with _post(base + endpoint, body_of(i)) as r:
            while True:
                piece = r.read1(65536)
                if not piece:
                    break
                if first is None:
                    first = time.perf_counter() - start
                size += len(piece)
        return first, time.perf_counter() - start, size / 2 / RATE

    return one


def _post(url: str, body: dict):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(request, timeout=600)


# ---------------------------------------------------------------------------------------
# the three paths
# ---------------------------------------------------------------------------------------
def measure_api(args) -> list[dict]:
    from editx import Runtime

    rt = Runtime.from_pretrained(args.model, device=args.device, seed=0)
    try:
        rt.warmup()
        one = api_request(rt, Path(args.prompt_audio), args.tokens)
        one(0)  # voice cached, first-use costs paid
        return [_level("api", n, one, args.rounds) for n in args.concurrency]
    finally:
        rt.close()


def measure_http(args) -> dict[str, list[dict]]:
    port = _free_port()
    cmd = [sys.executable, "-m", "editx.cli", "serve", "--model", args.model, "--device", args.device,
           "--port", str(port), "--quiet", "--max-num-seqs", str(max(64, max(args.concurrency)))]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ))
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(base, server, args.startup_timeout)
        inline = {"prompt_audio": base64.b64encode(Path(args.prompt_audio).read_bytes()).decode()}
        with _post(base + "/v1/voices", {"audio": inline["prompt_audio"], "text": PROMPT_TEXT, "name": "bench"}) as r:
            by_id = {"voice_id": json.loads(r.read())["voice_id"]}
        levels = {}
        for name, request in (("http", clone_body(inline, args.tokens)), ("http_voice", clone_body(by_id, args.tokens)),
                              ("http_openai", speech_body("bench", args.tokens))):
            one = http_request(base, request)
            one(0)
            levels[name] = [_level(name, n, one, args.rounds) for n in args.concurrency]
        return levels
    finally:
        server.terminate()
        server.wait(timeout=60)


def _level(name: str, n: int, one, rounds: int) -> dict:
    level = run_level(n, one, rounds)
    progress(f"{name:10s} c={n:<3d} TTFA p50 {level['ttfa_ms_p50']:8.1f} ms, {level['audio_s_per_s']:.2f} audio-s/s")
    return level


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(base: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"editx serve exited: {server.stdout.read().decode(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2):
                progress("server up")
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"editx serve did not answer within {timeout:.0f} s")


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    paths = {"api": measure_api(args), **measure_http(args)}
    for name in ("http", "http_voice", "http_openai"):  # overhead vs the in-process baseline measured in this run
        for level, base in zip(paths[name], paths["api"]):
            level["ttfa_vs_api"] = level["ttfa_ms_p50"] / base["ttfa_ms_p50"]
            level["throughput_vs_api"] = level["audio_s_per_s"] / base["audio_s_per_s"]
    payload = {"benchmark": "e2e/server", "env": environment(device), "model": args.model, "tokens": args.tokens,
               "rounds": args.rounds, "paths": paths}
    rows = [(f"{name} c={lv['concurrency']}", f"TTFA p50 {lv['ttfa_ms_p50']:8.1f} ms | "
             f"{lv['audio_s_per_s']:6.2f} audio-s/s" + (f" | TTFA x{lv['ttfa_vs_api']:.2f}, throughput "
                                                        f"x{lv['throughput_vs_api']:.2f} of api"
                                                        if "ttfa_vs_api" in lv else ""))
            for name, levels in paths.items() for lv in levels]
    return finish(result_path(args.out, "server", device, args.model), payload, rows)


if __name__ == "__main__":
    main()
