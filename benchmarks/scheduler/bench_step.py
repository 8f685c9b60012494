"""Scheduling cost per engine step: the C++ scheduler (editx._scheduler) vs the pure-Python
reference with the same policy (editx.engine.scheduler.PyScheduler), measured in one run.

For each size N, N requests sharing a voice prompt are submitted and driven (fake engine,
no model) until all N are decoding; then every step is timed in steady state:
  step_us      sched.step(now) plus reading every plan field the engine uses (arrays,
               block tables, decoder items): the scheduling decision itself;
  protocol_us  the engine's reports for that step: one append_batch() with the N sampled
               ids and one decoder_done() per decoder item;
  total_us     both. Target (issue 4): step_us <= 50 at N = 256 for the C++ scheduler.

    python benchmarks/scheduler/bench_step.py                      # N = 1, 64, 256, 1024
    python benchmarks/scheduler/bench_step.py --sizes 256 --steps 500 --out /tmp/s.json
Medians are reported (p90, mean and min too): the machine may be shared.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

from editx.engine.scheduler import SchedulerConfig, make_scheduler

ROOT = Path(__file__).resolve().parents[2]
VOICE_PROMPT = 566   # system prompt + speaker text + prompt audio tokens (shared; not block-aligned,
                     # so admissions also copy the voice's last partial block)
OWN_TEXT = 40        # the request's own target text
SECONDS_PER_ID = 0.024


def bench_config(n: int, steps: int) -> SchedulerConfig:
    per_request = VOICE_PROMPT + OWN_TEXT + steps + 64
    return SchedulerConfig(block_size=16, num_blocks=n * -(-per_request // 16) + 64, max_num_seqs=max(n, 1),
                           max_num_batched_tokens=max(2048, n), max_decoder_batch=16, max_model_len=per_request)


class Driver:
    """Minimal engine: samples token ids for every sequence that needs one, runs decoder items."""

    def __init__(self, sched) -> None:
        self.sched = sched
        self.now = 0.0
        self.token = 65536
        self.decoder_items = 0
        self.last_had_prefill = True

    def run_step(self) -> tuple[int, int]:
        """One engine step; returns (step ns, protocol ns)."""
        self.now += 0.03
        t0 = time.perf_counter_ns()
        plan = self.sched.step(self.now)
        ids = consume_plan(plan)
        t1 = time.perf_counter_ns()
        if len(ids):
            self.token = 65536 + (self.token + 1) % 4096
            self.sched.append_batch(ids, np.full(len(ids), self.token, np.int64))
        for d in plan.decoder:
            self.sched.decoder_done(d.req_id, d.num_ids * SECONDS_PER_ID, self.now)
        t2 = time.perf_counter_ns()
        self.decoder_items += len(plan.decoder)
        self.last_had_prefill = len(plan.prefill_req_ids) > 0
        return t1 - t0, t2 - t1


def consume_plan(plan) -> np.ndarray:
    """Reads what an engine reads from a plan; returns the ids that get a sampled token."""
    _ = (plan.prefill_starts, plan.prefill_counts, plan.decode_positions, plan.context_lens,
         plan.block_table_offsets, plan.block_table_ids, plan.copies, plan.preempted_req_ids, plan.ended)
    _ = [(d.req_id, d.start, d.num_feed) for d in plan.decoder]
    last = plan.prefill_req_ids[plan.prefill_is_last]
    return np.concatenate([last, plan.decode_req_ids]) if len(last) else plan.decode_req_ids


def measure(impl: str, n: int, steps: int, warmup: int) -> dict:
    sched = make_scheduler(bench_config(n, steps + warmup), impl)
    drv = Driver(sched)
    voice = list(range(1000, 1000 + VOICE_PROMPT))
    for k in range(n):
        sched.submit(voice + [(7 * k + j) % 5000 + 20000 for j in range(OWN_TEXT)], arrival=drv.now)
    ramp_steps, t_ramp = 0, time.perf_counter()
    while sched.stats()["waiting"] or drv.last_had_prefill:  # until every request decodes
        drv.run_step()
        ramp_steps += 1
        if ramp_steps > 10_000:
            raise RuntimeError("ramp did not converge")
    ramp_s = time.perf_counter() - t_ramp
    for _ in range(warmup):
        drv.run_step()
    items_before = drv.decoder_items
    step_ns, proto_ns = [], []
    for _ in range(steps):
        s, p = drv.run_step()
        step_ns.append(s)
        proto_ns.append(p)
    stats = sched.stats()
    assert stats["running"] == n and stats["preemptions"] == 0, "not a steady decode state"
    total = [a + b for a, b in zip(step_ns, proto_ns)]
    return {
        "impl": impl, "running": n, "steps_timed": steps,
        "step_us": _summary(step_ns), "protocol_us": _summary(proto_ns), "total_us": _summary(total),
        "ramp": {"steps": ramp_steps, "seconds": round(ramp_s, 4),
                 "prefix_hit_tokens": stats["prefix_hit_tokens"], "copied_blocks": stats["copied_blocks"]},
        "decoder_items_per_step": round((drv.decoder_items - items_before) / steps, 3),
    }


def _summary(ns: list[int]) -> dict:
    us = sorted(x / 1e3 for x in ns)
    return {"median": round(statistics.median(us), 2), "p90": round(us[int(0.9 * (len(us) - 1))], 2),
            "mean": round(statistics.fmean(us), 2), "min": round(us[0], 2)}


def environment() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=ROOT).stdout.strip() or None
    except OSError:
        sha = None
    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cpu": cpu,
            "python": platform.python_version(), "numpy": np.__version__, "git_sha": sha,
            "load_average_1m": round(os.getloadavg()[0], 2), "cpu_count": os.cpu_count(),
            "note": "single-threaded; the scheduler runs on the host CPU, so CPU numbers are the real ones"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 64, 256, 1024])
    ap.add_argument("--steps", type=int, default=300, help="timed steps per size and implementation")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scheduler_step_cpu.json")
    args = ap.parse_args()

    rows = []
    for n in args.sizes:
        cpp = measure("cpp", n, args.steps, args.warmup)
        py = measure("python", n, args.steps, args.warmup)
        speedup = round(py["step_us"]["median"] / cpp["step_us"]["median"], 1)
        rows += [cpp, py]
        print(f"N={n:5d}  step: C++ {cpp['step_us']['median']:9.2f} us  Python {py['step_us']['median']:10.2f} us"
              f"  ({speedup}x)   +protocol: C++ {cpp['protocol_us']['median']:8.2f} us"
              f"  Python {py['protocol_us']['median']:9.2f} us", flush=True)
    at_256 = [r for r in rows if r["impl"] == "cpp" and r["running"] == 256]
    payload = {
        "benchmark": "scheduler_step", "environment": environment(),
        "workload": {"voice_prompt_tokens": VOICE_PROMPT, "own_text_tokens": OWN_TEXT, "block_size": 16,
                     "max_decoder_batch": 16, "steady_state": "all N requests decoding, decoder items run at once"},
        "target": {"step_us_at_256": 50.0,
                   "met": bool(at_256) and at_256[0]["step_us"]["median"] <= 50.0 if at_256 else None},
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
