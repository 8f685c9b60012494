"""Parity of an exported graph: onnxruntime (CPU) against torch, judged against a float64 truth.

For random inputs the same graph module runs three ways: torch float32 (what the runtime
runs), onnxruntime float32 (the exported graph) and torch float64 (the truth). Both
float32 runs only differ in op order and kernels, so onnxruntime's error against the truth
must be of the order of torch's own float32 error:

    max|ort − truth| ≤ ERROR_BUDGET[graph] · max|torch32 − truth| + FLOOR_ULPS · ε32 · max|truth|

This adapts to the weights: random dummy weights that amplify rounding (dummy:tiny's DiT
outputs reach ±250, its HiFT phase arguments ±70) and well-scaled fixture weights get the
same criterion, and a real export bug (a baked-in length, a dropped mask, a wrong cache
order) shows up as an O(1) relative error, orders of magnitude over the budget.

Sizes are odd, include each graph's edge cases (1 frame; an empty cache for the streaming
graphs) and random odd draws, so a length the tracer baked in shows up.
"""
from __future__ import annotations

import copy
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .graphs import ExportedGraph, graph_spec

# Measured worst ratio max|ort − truth| / max|torch32 − truth| over 3 seeds × 3 sizes, on
# dummy:tiny and fixture weights (CPU EP, onnxruntime 1.32, torch 2.13): dit 2.4, dit_chunk 3.5,
# flow_encoder 1.8, hift_decode 2.0, vq02_chunk 2.3. A budget of 8 leaves ~2× headroom for
# other seeds / dims / CPUs; anything wrong in a graph is off by orders of magnitude.
ERROR_BUDGET = {"dit": 8.0, "dit_chunk": 8.0, "flow_encoder": 8.0, "hift_decode": 8.0, "vq02_chunk": 8.0}
# Outputs torch computes (almost) exactly (e.g. copied cache rows) make the first term ~0;
# a few float32 ulps of the output scale absorb onnxruntime's equally harmless rounding there.
FLOOR_ULPS = 8
EPS32 = float(torch.finfo(torch.float32).eps)

# Edge cases per graph (besides batch); random odd sizes are added by `check_sizes`.
EDGE_SIZES: dict[str, list[dict[str, int]]] = {
    "dit": [{"frames": 1}, {"frames": 97}],
    "dit_chunk": [{"frames": 1, "cached": 0}, {"frames": 15, "cached": 0}, {"frames": 31, "cached": 57}],
    "flow_encoder": [{"frames": 1}, {"frames": 49}],
    "hift_decode": [{"frames": 1}, {"frames": 41}],
    "vq02_chunk": [{"frames": 1, "cached": 0}, {"frames": 3, "cached": 16}, {"frames": 9, "cached": 21}],
}
# Upper bounds of the random draws (the vocoder's float64 truth is the slow part: 480 samples per frame).
MAX_RANDOM = {"frames": 61, "cached": 64}
MAX_RANDOM_FRAMES = {"hift_decode": 21, "vq02_chunk": 15}  # vq02 calls carry 4 frames upstream


def check_sizes(name: str, draws: int = 2, seed: int = 0) -> list[dict[str, int]]:
    """Edge sizes plus `draws` random ones (odd frame counts, any cache length), reproducibly."""
    rng = random.Random(f"{name}:{seed}")
    limits = {**MAX_RANDOM, "frames": MAX_RANDOM_FRAMES.get(name, MAX_RANDOM["frames"])}
    sizes = [dict(s) for s in EDGE_SIZES[name]]
    for _ in range(draws):
        sizes.append({k: (2 * rng.randint(0, (limits[k] - 1) // 2) + 1 if k == "frames" else rng.randint(0, limits[k]))
                      for k in EDGE_SIZES[name][0]})
    return sizes


@dataclass(frozen=True)
class Comparison:
    """One output at one size: errors of onnxruntime and of torch float32 against the float64 truth."""

    output: str
    sizes: dict
    ort_error: float
    torch_error: float
    scale: float
    shape_ok: bool

    def bound(self, budget: float) -> float:
        return budget * self.torch_error + FLOOR_ULPS * EPS32 * max(self.scale, 1.0)

    def ok(self, budget: float) -> bool:
        return self.shape_ok and self.ort_error <= self.bound(budget)


class GraphChecker:
    """Runs one exported graph on onnxruntime (CPU) beside its torch module in float32 and float64."""

    def __init__(self, graph: ExportedGraph, model: nn.Module) -> None:
        import onnxruntime as ort

        self.graph, self.spec = graph, graph_spec(graph.name)
        self.m32 = copy.deepcopy(model).to("cpu", torch.float32).eval()
        self.w32 = self.spec.wrap(self.m32).eval()
        self.w64 = self.spec.wrap(copy.deepcopy(self.m32).double()).double().eval()
        self.session = ort.InferenceSession(graph.onnx, providers=["CPUExecutionProvider"])

    def compare(self, sizes: dict[str, int], seed: int = 0) -> list[Comparison]:
        inputs = self.spec.example_inputs(self.m32, seed=seed, **sizes)
        with torch.no_grad():
            ref32 = _tuple(self.w32(*inputs))
            ref64 = _tuple(self.w64(*[t.double() if t.is_floating_point() else t for t in inputs]))
        got = self.session.run(list(self.spec.outputs), {n: t.numpy() for n, t in zip(self.spec.inputs, inputs)})
        out = []
        for name, a, truth, g in zip(self.spec.outputs, ref32, ref64, got):
            g = torch.from_numpy(np.asarray(g)).double()
            shape_ok = tuple(g.shape) == tuple(truth.shape) == tuple(a.shape)
            if not shape_ok or truth.numel() == 0:
                out.append(Comparison(name, sizes, 0.0, 0.0, 0.0, shape_ok))
                continue
            out.append(Comparison(name, sizes, float((g - truth).abs().max()), float((a.double() - truth).abs().max()),
                                  float(truth.abs().max()), True))
        return out


def verify_graph(graph: ExportedGraph, model: nn.Module) -> list[Comparison]:
    """Every comparison at `check_sizes(graph.name)`; raises AssertionError naming the first failure."""
    checker = GraphChecker(graph, model)
    budget = ERROR_BUDGET[graph.name]
    results = []
    for i, sizes in enumerate(check_sizes(graph.name)):
        for c in checker.compare(sizes, seed=i):
            if not c.ok(budget):
                raise AssertionError(f"{graph.name} {c.output} at {sizes}: "
                                     + ("shape differs from torch" if not c.shape_ok else
                                        f"onnxruntime error {c.ort_error:.3g} > bound {c.bound(budget):.3g} "
                                        f"(torch float32 error {c.torch_error:.3g})"))
            results.append(c)
    return results


def _tuple(x) -> tuple:
    return x if isinstance(x, tuple) else (x,)
