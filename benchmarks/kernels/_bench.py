"""Shared helpers of the kernel benchmarks: device choice, timing, JSON layout.

Every `bench_<op>.py` times the Triton kernel and its torch reference in the same run at the
real model shapes and writes one JSON (`--out`). On CUDA the timing is `triton.testing.do_bench`
(CUDA events, L2 flushed between runs, median). `--quick` runs tiny shapes a few times: the CPU
dry run (with TRITON_INTERPRET=1) that checks the scripts work; its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import environment, print_table, write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results"


def parse_args(description: str, argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="tiny shapes, few repeats (CPU dry run)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/kernels/<op>_<device>.json)")
    args = p.parse_args(argv)
    args.device = torch.device(args.device)
    if args.device.type == "cpu" and not args.quick:
        p.error("the real shapes need CUDA; on the CPU use --quick (with TRITON_INTERPRET=1)")
    return args


def time_us(fn: Callable[[], object], device: torch.device, quick: bool) -> float:
    """Median microseconds of one call of `fn` (synchronised)."""
    if device.type == "cuda":
        import triton.testing

        return 1e3 * triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    fn()
    samples = []
    for _ in range(1 if quick else 5):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e6)
    return statistics.median(samples)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def row(name: str, shape: dict, kernel_us: float, reference_us: float, *, bytes_moved: float | None = None,
        flops: float | None = None, max_diff: float | None = None, **extra) -> dict:
    """One result: times, speedup, and the kernel's achieved GB/s and/or TFLOP/s."""
    out = {"case": name, **shape, "kernel_us": round(kernel_us, 2), "reference_us": round(reference_us, 2),
           "speedup": round(reference_us / kernel_us, 3) if kernel_us > 0 else None}
    if bytes_moved is not None:
        out["kernel_gbs"] = round(bytes_moved / (kernel_us * 1e-6) / 1e9, 1)
    if flops is not None:
        out["kernel_tflops"] = round(flops / (kernel_us * 1e-6) / 1e12, 2)
        out["reference_tflops"] = round(flops / (reference_us * 1e-6) / 1e12, 2)
    if max_diff is not None:
        out["max_abs_diff"] = max_diff
    out.update(extra)
    return out


def finish(op: str, args: argparse.Namespace, results: list[dict], notes: str) -> Path:
    """Print a table and write the JSON ({op, environment, notes, results})."""
    print_table([(r["case"], f"kernel {r['kernel_us']:.1f} us | torch {r['reference_us']:.1f} us | "
                  f"x{r['speedup']}" + (f" | {r['kernel_gbs']} GB/s" if "kernel_gbs" in r else "")
                  + (f" | {r['kernel_tflops']} TFLOP/s" if "kernel_tflops" in r else "")) for r in results])
    path = Path(args.out) if args.out else RESULTS / "kernels" / f"{op}_{args.device.type}.json"
    payload = {"op": op, "environment": environment(args.device), "quick": args.quick, "notes": notes,
               "results": results}
    return write_json(path, payload)
