"""`editx export`: write the ONNX graphs (and optionally TensorRT plans) of a model into a folder.

    editx export --model PATH|dummy:tiny|dummy:full --out DIR [--graphs dit,hift_decode|all]
                 [--opset 17] [--no-simplify] [--verify] [--tensorrt] [--decoder-dtype float16]

Writes `DIR/<graph>.onnx` + `DIR/graphs.json` (see `store.py`); `--verify` runs every graph on
onnxruntime (CPU) against torch at random odd lengths; `--tensorrt` builds the plans the
runtime would build into `DIR/tensorrt/` (CUDA + tensorrt needed). A runtime started with
`export_dir=DIR` (`--export-dir DIR` on clone / edit) then runs the chosen stages from there.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from types import SimpleNamespace

from ..config import RuntimeConfig
from ..errors import InvalidInputError
from .graphs import GRAPHS, OPSET, export_graph, graph_spec
from .store import save_graphs


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "--model-path", dest="model", required=True,
                   help="upstream install folder, or dummy:tiny / dummy:full")
    p.add_argument("--out", "--output-dir", dest="out", required=True, help="folder for the graphs and graphs.json")
    p.add_argument("--graphs", default="all",
                   help=f"comma-separated graphs or stages (graphs: {', '.join(GRAPHS)}; default all)")
    p.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxsim even when it is installed")
    p.add_argument("--verify", action="store_true", help="check onnxruntime (CPU) against torch after export")
    p.add_argument("--device", default="cpu", help="where the models are loaded (the export itself runs on CPU)")
    p.add_argument("--decoder-dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype the runtime will load flow + HiFT in (graphs are tied to those weights)")
    p.add_argument("--frontend-dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype the runtime will load the vq02 encoder in")
    p.add_argument("--seed", type=int, default=0, help="dummy presets: the runtime seed (it picks the weights)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--tensorrt", action="store_true",
                   help="also build the TensorRT plans a runtime with these dtypes uses (into OUT/tensorrt; "
                        "precision = the stage's dtype, e.g. --decoder-dtype float16 for fp16 decoder engines)")


def selected_graphs(value: str) -> list[str]:
    """'all', or graph names and/or stage names (a stage means all of its graphs), in registry order."""
    if value.strip() == "all":
        return list(GRAPHS)
    wanted: set[str] = set()
    for item in (v.strip() for v in value.split(",") if v.strip()):
        by_stage = [g.name for g in GRAPHS.values() if g.stage == item]
        if by_stage:  # a stage first: "dit" is the stage (both DiT graphs) as well as a graph name
            wanted.update(by_stage)
        elif item in GRAPHS:
            wanted.add(item)
        else:
            raise InvalidInputError(f"--graphs: unknown graph or stage {item!r}; graphs are {', '.join(GRAPHS)}")
    return [g for g in GRAPHS if g in wanted]


def run(args: argparse.Namespace, report=print) -> list[Path]:
    """Execute `editx export`; returns the written files (graphs, manifest, plans)."""
    from ..loading.components import load_stage_models

    names = selected_graphs(args.graphs)
    config = RuntimeConfig(device=args.device, decoder_dtype=args.decoder_dtype, frontend_dtype=args.frontend_dtype,
                           seed=args.seed, export_dir=args.out)
    report(f"loading {args.model} (flow, HiFT, vq02 encoder) on {config.device}")
    flow, hift, vq02 = load_stage_models(args.model, config)
    models = SimpleNamespace(flow=flow, hift=hift, vq02=vq02)
    exported = []
    for name in names:
        start = time.perf_counter()
        graph = export_graph(name, graph_spec(name).source(models), opset=args.opset,
                             simplify=False if args.no_simplify else None)
        exported.append(graph)
        report(f"{name}: {len(graph.onnx) / 2**20:.1f} MiB, opset {graph.opset}, "
               f"{'simplified' if graph.simplified else 'not simplified'}, {time.perf_counter() - start:.1f} s")
    manifest = save_graphs(args.out, exported, str(args.model))
    written = [Path(args.out) / f"{g.name}.onnx" for g in exported] + [manifest]
    if args.verify:
        from .verify import verify_graph

        for graph in exported:
            checks = verify_graph(graph, graph_spec(graph.name).source(models))  # raises on a failure
            worst = max(checks, key=lambda c: c.ort_error / max(c.bound(1.0), 1e-30))
            report(f"{graph.name}: onnxruntime matches torch at {len({str(c.sizes) for c in checks})} sizes "
                   f"(worst: {worst.output} error {worst.ort_error:.2g} vs torch float32's {worst.torch_error:.2g}, "
                   f"both against float64)")
    if args.tensorrt:
        written += _build_plans(exported, models, config, report)
    return written


def _build_plans(exported, models, config: RuntimeConfig, report) -> list[Path]:
    """The plans `RunnerFactory` would build for these graphs (same keys, so the runtime reuses them)."""
    from .backends import plan_cache_dir, stage_dtype
    from .tensorrt import DTYPE_PRECISION, PlanCache, PlanKey, build_plan, default_profiles, gpu_name, \
        require_tensorrt

    trt = require_tensorrt(config.device)
    cache = PlanCache(plan_cache_dir(config))
    paths = []
    for graph in exported:
        spec, model = graph_spec(graph.name), graph_spec(graph.name).source(models)
        profiles = default_profiles(spec, model)
        precision = DTYPE_PRECISION[stage_dtype(config, spec.stage)]
        key = PlanKey(spec.name, graph.sha256, gpu_name(config.device), trt.__version__, precision, tuple(profiles))
        start = time.perf_counter()
        cache.get_or_build(key, lambda: build_plan(graph.onnx, profiles, precision, what=spec.name))
        paths.append(cache.path(key))
        report(f"{spec.name}: TensorRT {precision} plan {cache.path(key).name} ({time.perf_counter() - start:.1f} s)")
    return paths
