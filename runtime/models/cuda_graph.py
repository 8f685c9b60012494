"""Recording one step of static-buffer work as a CUDA graph (shared by the LLM and DiT runners)."""
from __future__ import annotations

from typing import Any, Callable

import torch


def capture_graph(step: Callable[[], Any], device: torch.device, pool,
                  thread_local: bool = False) -> tuple[torch.cuda.CUDAGraph, Any]:
    """Record `step()` (reading/writing only static buffers) as a CUDA graph in `pool`; returns
    (graph, its output). Two warm-up runs on a side stream first settle lazy inits and the
    allocator outside the graph; they write exactly what the step writes, so capturing with a real
    step's inputs in the buffers is harmless.

    thread_local: capture in "thread_local" error mode, for a capture that runs while another thread
    keeps launching its own work (the decoder worker captures DiT graphs while the engine thread
    steps the LLM on another stream); "global" mode would fail on that thread's allocator calls.
    """
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    mode = "thread_local" if thread_local else "global"
    with torch.cuda.graph(graph, pool=pool, capture_error_mode=mode):
        out = step()
    return graph, out
