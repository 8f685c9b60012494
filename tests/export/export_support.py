"""Shared, cached models and exported graphs for the export tests (each export takes ~1 s).

Sources: the `dummy:tiny` preset (random weights, as the runtime builds them) and every
fixture set under $EDITX_FIXTURES (upstream-format checkpoints: flow.pt, hift.pt, model.pt).
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

import pytest

from editx.config import RuntimeConfig
from editx.export.graphs import ExportedGraph, export_graph, graph_spec, weights_fingerprint
from editx.export.verify import GraphChecker
from editx.loading.components import load_stage_models
from editx.models.flow import load_flow
from editx.models.hift import load_hift
from editx.models.vq02 import load_paraformer_encoder
from fixture_sets import fixture_roots

TINY = "dummy:tiny"


def sources() -> list:
    """pytest params: dummy:tiny and one per fixture set (as 'fixtures:<path>')."""
    return [pytest.param(TINY, id=TINY)] + [pytest.param(f"fixtures:{root}", id=f"fixtures:{root.name}")
                                            for root in fixture_roots()]


@lru_cache(maxsize=4)
def models(source: str) -> SimpleNamespace:
    """(flow, hift, vq02) of a source, float32 on CPU."""
    if source == TINY:
        flow, hift, vq02 = load_stage_models(TINY, RuntimeConfig())
    else:
        root = Path(source.removeprefix("fixtures:"))
        cosyvoice, paraformer = weight_dir(root, "cosyvoice"), weight_dir(root, "paraformer")
        flow = load_flow(cosyvoice)[0]
        hift = load_hift(cosyvoice)
        vq02 = load_paraformer_encoder(paraformer)[0]
    return SimpleNamespace(flow=flow, hift=hift, vq02=vq02)


def weight_dir(root: Path, name: str) -> Path:
    """A fixture set's weights folder, as its manifest names it (`weights.<name>.dir`)."""
    entry = (json.loads((root / "manifest.json").read_text()).get("weights") or {}).get(name) or {}
    return root / entry.get("dir", f"weights/{name}")


def source_model(source: str, graph: str):
    return graph_spec(graph).source(models(source))


_EXPORTS: dict[tuple[str, str], ExportedGraph] = {}


def export_cached(graph: str, model) -> ExportedGraph:
    """export_graph once per (graph, weights): tests of several files share the exports."""
    key = (graph, weights_fingerprint(model))
    if key not in _EXPORTS:
        # No onnxsim here even where it is installed: CI does not install it, so test the plain export.
        _EXPORTS[key] = export_graph(graph, model, simplify=False)
    return _EXPORTS[key]


def exported(source: str, graph: str) -> ExportedGraph:
    return export_cached(graph, source_model(source, graph))


@lru_cache(maxsize=16)
def checker(source: str, graph: str) -> GraphChecker:
    return GraphChecker(exported(source, graph), source_model(source, graph))
