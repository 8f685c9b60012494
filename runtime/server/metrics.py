"""`GET /metrics`: the server's and the engine's numbers in Prometheus' text format (version 0.0.4).

Written by hand (a few counters, one histogram, gauges): no client library to install for a scrape.
Names follow Prometheus conventions: `_total` counters, seconds, one `editx_` prefix.
"""
from __future__ import annotations

import math
import re
from bisect import bisect_left
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Time to first chunk at the server, seconds: around the targets (p50 100 ms, p99 150 ms at c=1,
# 250 / 400 ms at c=8 / c=32) and up to CPU-scale waits.
FIRST_CHUNK_BUCKETS = (0.05, 0.1, 0.15, 0.25, 0.4, 0.6, 1.0, 2.0, 5.0, 10.0)


@dataclass
class Histogram:
    """Cumulative-bucket histogram: counts[i] = observations <= bounds[i] (plus +Inf = count)."""

    bounds: tuple[float, ...] = FIRST_CHUNK_BUCKETS
    counts: list[int] = field(init=False)
    count: int = 0
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.bounds)

    def observe(self, value: float) -> None:
        for i in range(bisect_left(self.bounds, value), len(self.bounds)):
            self.counts[i] += 1
        self.count += 1
        self.total += value


def render(counters, engine: dict) -> str:
    """The exposition text: server counters (`state.Counters`) and every numeric engine statistic."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, value: float) -> None:
        lines.extend((f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {_number(value)}"))

    metric("editx_requests_total", "counter", "Audio requests admitted.", counters.requests)
    metric("editx_requests_rejected_total", "counter", "Requests refused with 503 (over max_requests).",
           counters.rejected)
    metric("editx_requests_failed_total", "counter", "Requests that ended with an error.", counters.failed)
    metric("editx_requests_cancelled_total", "counter", "Requests whose client left before the last chunk.",
           counters.cancelled)
    metric("editx_requests_in_flight", "gauge", "Requests admitted and not yet ended.", counters.in_flight)
    hist = counters.first_chunk
    name = "editx_first_chunk_seconds"
    lines.extend((f"# HELP {name} Time from admission to the first audio chunk.", f"# TYPE {name} histogram"))
    for bound, count in zip(hist.bounds, hist.counts):
        lines.append(f'{name}_bucket{{le="{_number(bound)}"}} {count}')
    lines.extend((f'{name}_bucket{{le="+Inf"}} {hist.count}', f"{name}_sum {_number(hist.total)}",
                  f"{name}_count {hist.count}"))
    for key, value in sorted(engine.items()):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue  # e.g. decoder_graph_error (a message or None)
        metric(f"editx_engine_{_snake(key)}", "gauge", f"Runtime.engine_stats()['{key}'].", value)
    return "\n".join(lines) + "\n"


def _snake(key: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


def _number(value: float) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return repr(value) if isinstance(value, float) else str(int(value))
