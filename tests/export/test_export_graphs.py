"""Every graph, exported from dummy:tiny and from every fixture set's checkpoints, runs on
onnxruntime (CPU) like torch at odd and random lengths (editx.export.verify's criterion:
onnxruntime's error against a float64 run is of the order of torch float32's own)."""
from __future__ import annotations

import copy
import zlib

import onnx
import pytest
import torch

from editx.errors import CheckpointError, InvalidInputError
from editx.export.graphs import GRAPHS, OPSET, check_onnx, export_graph, graph_spec, stage_graphs, weights_fingerprint
from editx.export.verify import ERROR_BUDGET, check_sizes
from export_support import TINY, checker, exported, models, source_model, sources


@pytest.mark.parametrize("graph", list(GRAPHS))
@pytest.mark.parametrize("source", sources())
def test_onnxruntime_matches_torch(source, graph):
    check = checker(source, graph)
    budget = ERROR_BUDGET[graph]
    for seed, sizes in enumerate(check_sizes(graph, draws=2, seed=zlib.crc32(source.encode()))):
        for c in check.compare(sizes, seed=seed):
            assert c.shape_ok, f"{graph} {c.output} at {sizes}: onnxruntime shape differs from torch"
            assert c.ok(budget), (f"{graph} {c.output} at {sizes}: onnxruntime error {c.ort_error:.3g} vs float64 "
                                  f"exceeds {c.bound(budget):.3g} (torch float32 error {c.torch_error:.3g})")


@pytest.mark.parametrize("graph", list(GRAPHS))
def test_graph_signature_and_dynamic_axes(graph):
    spec = graph_spec(graph)
    model = onnx.load_from_string(exported(TINY, graph).onnx)
    assert model.opset_import[0].version == OPSET
    assert [i.name for i in model.graph.input] == list(spec.inputs)
    assert [o.name for o in model.graph.output] == list(spec.outputs)
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        for axis, symbol in spec.dynamic_axes.get(value.name, {}).items():
            assert dims[axis].dim_param == symbol, f"{graph}.{value.name} axis {axis} is not dynamic"
    # Initialisers are the weights: nothing of the traced example inputs may be baked in.
    assert all(not init.name.startswith(("x", "mel", "feats")) for init in model.graph.initializer)


def test_export_is_deterministic_and_tied_to_the_weights():
    model = source_model(TINY, "flow_encoder")
    a, b = export_graph("flow_encoder", model, simplify=False), exported(TINY, "flow_encoder")
    assert a.sha256 == b.sha256 and a.fingerprint == b.fingerprint == weights_fingerprint(model)
    # The fingerprint sees any weight change (here: the same module in bf16 precision).
    assert weights_fingerprint(copy.deepcopy(model).to(torch.bfloat16)) != a.fingerprint


def test_export_leaves_the_source_module_untouched():
    model = source_model(TINY, "vq02_chunk")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_graph("vq02_chunk", model, simplify=False)
    after = model.state_dict()
    assert all(before[k].equal(after[k]) and before[k].dtype == after[k].dtype for k in before)


def test_stage_graph_table():
    assert stage_graphs("dit") == ["dit", "dit_chunk"]
    assert [stage_graphs(s) for s in ("flow_encoder", "hift", "vq02")] == [["flow_encoder"], ["hift_decode"],
                                                                           ["vq02_chunk"]]
    with pytest.raises(InvalidInputError, match="stage"):
        stage_graphs("llm")
    with pytest.raises(InvalidInputError, match="graph"):
        graph_spec("vocoder")


def test_bad_opset_and_corrupt_graph_are_clear_errors():
    with pytest.raises(InvalidInputError, match="opset"):
        export_graph("dit", models(TINY).flow.decoder.estimator, opset=11)
    with pytest.raises(CheckpointError, match="onnx.checker|ONNX graph"):
        check_onnx(b"not an onnx model", "dit")
