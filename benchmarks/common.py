"""Shared helpers for benchmarks: synchronised timing, environment metadata, JSON output."""
from __future__ import annotations

import datetime as _dt
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

import torch


_START = time.perf_counter()

# The clone prompt every end-to-end benchmark uses by default (a real speech clip from ../shared/audio).
DEFAULT_PROMPT = Path(__file__).resolve().parents[2] / "shared" / "audio" / "zero_shot_en_prompt.wav"
PROMPT_TEXT = "His political stance was conservative, and he was particularly close to margaret thatcher."


def progress(message: str) -> None:
    """One progress line on stderr, stamped with seconds since the benchmark started (long GPU runs)."""
    import sys

    print(f"[{time.perf_counter() - _START:7.1f} s] {message}", file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int = 1, repeats: int = 3) -> dict:
    """Median / min wall milliseconds of `fn()` after `warmup` untimed calls (synchronised)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        samples.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": statistics.median(samples), "min_ms": min(samples), "repeats": repeats}


def copy_bandwidth_gbs(device: torch.device, megabytes: int = 1024) -> float:
    """Measured device copy bandwidth in GB/s, counting read + write bytes (the spec's convention)."""
    n = megabytes * 2**20 // 4
    src = torch.empty(n, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    t = time_ms(lambda: dst.copy_(src), device, warmup=2, repeats=5)["min_ms"]
    return 2 * src.numel() * 4 / (t / 1e3) / 1e9


def environment(device: torch.device) -> dict:
    """Card / CPU name, library versions, git sha and date for result files."""
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        or platform.machine(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
    }
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    try:
        info["git_sha"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                         cwd=Path(__file__).parent).stdout.strip() or None
    except OSError:
        info["git_sha"] = None
    return info


def write_json(path: str | Path, payload: dict) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return p


def print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


RESULTS = Path(__file__).resolve().parent / "results"


def result_path(out: str | None, name: str, device: torch.device, model: str | None = None) -> Path:
    """`out`, or the default results file benchmarks/results/<name>_<device type>[_<model>].json."""
    if out:
        return Path(out)
    suffix = "" if model is None else "_" + model.replace(":", "_")
    return RESULTS / f"{name}_{torch.device(device).type}{suffix}.json"


def finish(out: str | Path, payload: dict, rows: list[tuple[str, str]]) -> dict:
    """A benchmark's ending: write `payload` as JSON to `out`, print the summary `rows`, say where."""
    write_json(out, payload)
    print_table(rows)
    print(f"wrote {out}")
    return payload


def write_svg_plot(path: str | Path, x_label: str, series: dict[str, list[tuple[float, float]]],
                   title: str = "", width: int = 640, height: int = 400) -> Path:
    """A dependency-free line plot (log2 x axis, linear y) of `series` name -> [(x, y)], as SVG."""
    import math

    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    pts = [(x, y) for s in series.values() for x, y in s if y == y]  # drop NaN
    if not pts:
        raise ValueError("nothing to plot")
    xs = [math.log2(max(x, 1e-9)) for x, _ in pts]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y1 = max(y for _, y in pts) * 1.1 or 1.0
    left, right, top, bottom = 60, 20, 40, 50
    sx = lambda x: left + (math.log2(max(x, 1e-9)) - x0) / (x1 - x0) * (width - left - right)  # noqa: E731
    sy = lambda y: height - bottom - y / y1 * (height - top - bottom)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             f'font-size="12"><rect width="100%" height="100%" fill="white"/>',
             f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>',
             f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="black"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="black"/>',
             f'<text x="{width / 2}" y="{height - 12}" text-anchor="middle">{x_label}</text>']
    for x in sorted({x for x, _ in pts}):
        parts.append(f'<text x="{sx(x):.1f}" y="{height - bottom + 16}" text-anchor="middle">{x:g}</text>')
    for k in range(5):
        y = y1 * k / 4
        parts.append(f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.3g}</text>')
    for i, (name, s) in enumerate(series.items()):
        color = colors[i % len(colors)]
        good = [(x, y) for x, y in s if y == y]
        path_d = " ".join(f"{'M' if j == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for j, (x, y) in enumerate(good))
        parts.append(f'<path d="{path_d}" fill="none" stroke="{color}" stroke-width="2"/>')
        parts.extend(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{color}"/>' for x, y in good)
        parts.append(f'<text x="{left + 10}" y="{top + 14 * (i + 1)}" fill="{color}">{name}</text>')
    parts.append("</svg>")
    p = Path(path)
    p.write_text("\n".join(parts) + "\n")
    return p
