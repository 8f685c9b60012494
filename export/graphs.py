"""Registry of the exported graphs and the ONNX export itself.

| graph          | stage        | torch call it replaces                      | dynamic axes                       |
|----------------|--------------|---------------------------------------------|------------------------------------|
| `dit`          | dit          | `DiT.forward` (one velocity call)           | batch, frames                      |
| `dit_chunk`    | dit          | `DiT.forward_chunk` (streaming, caches I/O) | batch, frames, cached_frames       |
| `flow_encoder` | flow_encoder | `UpsampleConformerEncoderV2.forward`        | batch, token_frames                |
| `hift_decode`  | hift         | `HiFTGenerator.decode(mel, source)`         | batch, frames / samples            |
| `vq02_chunk`   | vq02         | `SANMStreamingEncoder.forward_chunk`        | batch, frames, cached_frames       |

Every graph is exported with the TorchScript exporter (`torch.onnx.export(dynamo=False)`,
which needs no extra package; the dynamo exporter needs onnxscript) at opset 17 (the
first with LayerNormalization; TensorRT 10 parses 9–20), from a float32 CPU copy of the
module: ONNX graphs are always float32 and reduced precision is TensorRT's job. Each
file is checked with `onnx.checker` (full check, with shape inference) and simplified
with onnxsim when it is installed (the `export` extra); without it the exporter's own
constant folding is all there is, which ONNX Runtime and TensorRT handle fine.
Input/output names and shapes are documented in each `onnx_<graph>.py`.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import BackendUnavailableError, CheckpointError, InvalidInputError
from . import onnx_dit, onnx_dit_chunk, onnx_flow_encoder, onnx_hift, onnx_vq02

log = logging.getLogger("editx")

OPSET = 17


@dataclass(frozen=True)
class GraphSpec:
    """One exportable graph.

    doc: the `onnx_<graph>` module (INPUTS, OUTPUTS, DYNAMIC_AXES, example_inputs,
    input_shapes, output_shapes). source: picks the torch module the graph is exported
    from out of a `Components`-like object. wrap: torch module → exportable nn.Module.
    trace_sizes: the sizes traced with (odd, > 1, so no length is special-cased).
    size_names: the dynamic sizes besides batch (keys of trace_sizes / TensorRT ranges).
    """

    name: str
    stage: str
    doc: ModuleType
    source: Callable[[object], nn.Module]
    wrap: Callable[[nn.Module], nn.Module]
    trace_sizes: dict[str, int] = field(default_factory=dict)
    batch: int = 1

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(self.doc.INPUTS)

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(self.doc.OUTPUTS)

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return dict(self.doc.DYNAMIC_AXES)

    @property
    def size_names(self) -> tuple[str, ...]:
        return tuple(self.trace_sizes)

    def example_inputs(self, model: nn.Module, seed: int = 0, batch: int | None = None,
                       **sizes: int) -> tuple[torch.Tensor, ...]:
        """Random float32 CPU inputs (sizes default to the trace sizes)."""
        return self.doc.example_inputs(model, **{**self.trace_sizes, **sizes}, batch=batch or self.batch, seed=seed)

    def input_shapes(self, model: nn.Module, batch: int, **sizes: int) -> dict[str, tuple[int, ...]]:
        return self.doc.input_shapes(model, batch, **sizes)

    def output_shapes(self, model: nn.Module, inputs: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        return self.doc.output_shapes(model, inputs)


def _dit(c) -> nn.Module:
    return c.flow.decoder.estimator


GRAPHS: dict[str, GraphSpec] = {
    "dit": GraphSpec("dit", "dit", onnx_dit, _dit, onnx_dit.DiTGraph, {"frames": 37}, batch=2),
    "dit_chunk": GraphSpec("dit_chunk", "dit", onnx_dit_chunk, _dit, onnx_dit_chunk.DiTChunkGraph,
                           {"frames": 11, "cached": 9}, batch=2),
    "flow_encoder": GraphSpec("flow_encoder", "flow_encoder", onnx_flow_encoder, lambda c: c.flow.encoder,
                              onnx_flow_encoder.FlowEncoderGraph, {"frames": 13}),
    "hift_decode": GraphSpec("hift_decode", "hift", onnx_hift, lambda c: c.hift, onnx_hift.HiFTDecodeGraph,
                             {"frames": 9}),
    "vq02_chunk": GraphSpec("vq02_chunk", "vq02", onnx_vq02, lambda c: c.vq02, onnx_vq02.VQ02ChunkGraph,
                            {"frames": 5, "cached": 8}),
}


def stage_graphs(stage: str) -> list[str]:
    """Graph names a stage's backend needs (the DiT needs its whole-sequence and chunk graphs)."""
    names = [g.name for g in GRAPHS.values() if g.stage == stage]
    if not names:
        raise InvalidInputError(f"stage: unknown stage {stage!r}; stages are "
                                f"{sorted({g.stage for g in GRAPHS.values()})}")
    return names


def graph_spec(name: str) -> GraphSpec:
    if name not in GRAPHS:
        raise InvalidInputError(f"graph: unknown graph {name!r}; graphs are {', '.join(GRAPHS)}")
    return GRAPHS[name]


# -- fingerprints -----------------------------------------------------------------------
def weights_fingerprint(module: nn.Module) -> str:
    """sha256 over every tensor of `module.state_dict()` (name, shape, float32 bytes), sorted by name.

    Ties an exported graph to the weights it was exported from; weights loaded in another
    dtype (bf16-rounded, say) give another fingerprint, on purpose.
    """
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- export -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportedGraph:
    """An exported graph: ONNX bytes and what it was made from."""

    name: str
    onnx: bytes
    fingerprint: str
    simplified: bool
    opset: int = OPSET

    @property
    def sha256(self) -> str:
        return sha256_bytes(self.onnx)

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(self.onnx)
        return p


def export_graph(name: str, model: nn.Module, opset: int = OPSET, simplify: bool | None = None) -> ExportedGraph:
    """Export graph `name` from the stage's torch module (see the table in the module doc).

    model: the torch module `GRAPHS[name].source` picks (any device / dtype; it is copied to
    float32 CPU first and left untouched). simplify: True = onnxsim (error if missing),
    None = onnxsim when installed, False = never. Returns the checked ONNX bytes.
    """
    spec = graph_spec(name)
    if not 13 <= opset <= 20:
        raise InvalidInputError(f"opset: {opset} is outside [13, 20] (LayerNormalization needs 17 to stay fused)")
    fingerprint = weights_fingerprint(model)
    cpu = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    graph = spec.wrap(cpu).eval()
    args = spec.example_inputs(cpu)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings(), export_mode():
        # The TorchScript exporter is deprecated in favour of dynamo (which needs onnxscript), and
        # warns about Slice steps it cannot fold and about shape checks it traces as constants
        # (channel counts, head sizes: fixed per graph); none of it affects the graph.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*Constant folding.*")
        torch.onnx.export(graph, args, buffer, input_names=list(spec.inputs), output_names=list(spec.outputs),
                          dynamic_axes=spec.dynamic_axes, opset_version=opset, dynamo=False,
                          do_constant_folding=True)
    data = buffer.getvalue()
    check_onnx(data, name)
    simplified = False
    if simplify or (simplify is None and onnxsim_available()):
        data, simplified = simplify_onnx(data, name)
    return ExportedGraph(name, data, fingerprint, simplified, opset)


class _StaticNormShapes(TorchFunctionMode):
    """Make LayerNorm's `normalized_shape` a constant while tracing.

    Model code may pass `(x.shape[-1],)`; under the tracer that is a traced size, which the
    ONNX LayerNormalization symbolic refuses. It is a channel count, fixed for a graph, so
    taking its traced value as a constant is exact.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in (F.layer_norm, torch.layer_norm):
            args = list(args)
            if len(args) > 1:
                args[1] = tuple(int(s) for s in args[1])
            elif "normalized_shape" in kwargs:
                kwargs["normalized_shape"] = tuple(int(s) for s in kwargs["normalized_shape"])
        return func(*args, **kwargs)


@contextlib.contextmanager
def export_mode():
    """Tracing context: plain-PyTorch reference ops (no Triton kernels) and static norm shapes."""
    with contextlib.ExitStack() as stack:
        try:
            from ..layers import kernel_backend
        except ImportError:  # a tree without the kernel dispatch layer: references only anyway
            kernel_backend = None
        if kernel_backend is not None:
            stack.enter_context(kernel_backend("reference"))
        stack.enter_context(_StaticNormShapes())
        yield


def check_onnx(data: bytes, what: str) -> None:
    """onnx.checker full check (structure + strict shape inference); CheckpointError if it fails."""
    import onnx

    try:
        onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    except Exception as exc:  # onnx raises ValidationError / InferenceError
        raise CheckpointError(f"ONNX graph {what} failed onnx.checker: {exc}") from exc


def onnxsim_available() -> bool:
    try:
        import onnxsim  # noqa: F401
    except ImportError:
        return False
    return True


def simplify_onnx(data: bytes, what: str) -> tuple[bytes, bool]:
    """onnxsim.simplify with its own numeric check; returns (bytes, simplified?)."""
    if not onnxsim_available():
        raise BackendUnavailableError("ONNX simplification needs onnxsim (pip install 'editx-rt[export]')")
    import onnx
    import onnxsim

    model, ok = onnxsim.simplify(onnx.load_from_string(data))
    if not ok:
        log.warning("onnxsim could not validate the simplified %s graph; keeping the unsimplified one", what)
        return data, False
    out = model.SerializeToString()
    check_onnx(out, what)
    return out, True
