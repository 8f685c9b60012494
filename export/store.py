"""Where the runtime gets a stage's ONNX graphs: an `editx export` folder, or a fresh in-memory export.

An export folder holds `<graph>.onnx` files and `graphs.json`:

    {"format": 1, "model": <source>, "opset": 17, "graphs": {
        "<graph>": {"file": "<graph>.onnx", "sha256": ..., "stage": ..., "fingerprint": ...,
                    "simplified": bool, "inputs": [...], "outputs": [...], "dynamic_axes": {...}}}}

`fingerprint` is the sha256 of the weights the graph was exported from
(`graphs.weights_fingerprint`): a runtime whose loaded weights differ (another checkpoint,
or the same one loaded in another dtype) refuses the graph instead of silently running
other weights.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from torch import nn

from ..errors import CheckpointError
from .graphs import ExportedGraph, export_graph, graph_spec, sha256_bytes, weights_fingerprint

log = logging.getLogger("editx")

MANIFEST = "graphs.json"
FORMAT = 1


def save_graphs(out_dir: str | Path, graphs: list[ExportedGraph], model_source: str) -> Path:
    """Write the graphs and (merged with any earlier entries) `graphs.json`; returns the manifest path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / MANIFEST
    manifest = _read(path) if path.is_file() else {"format": FORMAT, "graphs": {}}
    manifest["model"] = model_source
    for g in graphs:
        spec = graph_spec(g.name)
        g.save(out / f"{g.name}.onnx")
        manifest["graphs"][g.name] = {
            "file": f"{g.name}.onnx", "sha256": g.sha256, "stage": spec.stage, "fingerprint": g.fingerprint,
            "simplified": g.simplified, "opset": g.opset, "inputs": list(spec.inputs), "outputs": list(spec.outputs),
            "dynamic_axes": {k: {str(a): n for a, n in v.items()} for k, v in spec.dynamic_axes.items()},
        }
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return path


def _read(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read export manifest {path}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("graphs"), dict):
        raise CheckpointError(f"export manifest {path}: not an editx export manifest (format {FORMAT})")
    return manifest


class GraphSource:
    """ONNX bytes for a graph: from `export_dir` (checked) or exported now from the torch module."""

    def __init__(self, export_dir: str | Path | None) -> None:
        self.export_dir = None if export_dir is None else Path(export_dir)
        self.manifest = None
        if self.export_dir is not None:
            path = self.export_dir / MANIFEST
            if not path.is_file():
                raise CheckpointError(f"export_dir {self.export_dir}: no {MANIFEST} (run `editx export` into it first)")
            self.manifest = _read(path)

    def onnx(self, name: str, model: nn.Module) -> bytes:
        """The graph's ONNX bytes, exported from (or checked against) `model`'s weights."""
        if self.manifest is None:
            start = time.perf_counter()
            graph = export_graph(name, model)
            log.info("exported %s to ONNX in memory in %.1f s (pass export_dir to reuse `editx export` output)",
                     name, time.perf_counter() - start)
            return graph.onnx
        entry = self.manifest["graphs"].get(name)
        if entry is None:
            raise CheckpointError(f"export_dir {self.export_dir}: graph {name!r} was not exported "
                                  f"(run `editx export --graphs {name}`)")
        data = (self.export_dir / entry["file"]).read_bytes() if (self.export_dir / entry["file"]).is_file() else None
        if data is None:
            raise CheckpointError(f"export_dir {self.export_dir}: missing {entry['file']}")
        if sha256_bytes(data) != entry["sha256"]:
            raise CheckpointError(f"export_dir {self.export_dir}: {entry['file']} does not match its sha256 in {MANIFEST}")
        if weights_fingerprint(model) != entry["fingerprint"]:
            raise CheckpointError(
                f"export_dir {self.export_dir}: {name} was exported from other weights than the loaded model "
                f"({self.manifest.get('model')}; a different checkpoint, or the same one in another dtype); "
                "re-run `editx export` with this model and dtype")
        return data
