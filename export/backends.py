"""Per-stage backends: run the DiT estimator, flow encoder, HiFT decode or vq02 encoder on
onnxruntime or TensorRT in place of PyTorch.

Each backend object has the call signature of the torch method it replaces, and is put
in place on a *view* of the shared model: a shallow copy that shares every weight and
swaps exactly one call, so the engine code (token2wav, the voice front end) runs
unchanged and the torch modules stay untouched:

| stage          | replaced call                              | backend object                 |
|----------------|--------------------------------------------|--------------------------------|
| `dit`          | `flow.decoder.estimator` (`forward`, `forward_chunk`) | `DiTBackend` (graphs `dit`, `dit_chunk`) |
| `flow_encoder` | `flow.encoder.forward`                     | `FlowEncoderBackend` (`flow_encoder`) |
| `hift`         | `hift.decode(mel, source)`                 | `HiFTDecodeBackend` (`hift_decode`) |
| `vq02`         | `vq02.forward_chunk(feats, state)`         | `VQ02ChunkBackend` (`vq02_chunk`) |

Graphs run in float32 (onnxruntime) or in the stage's dtype with fp32 fallback layers
(TensorRT: decoder_dtype for the decoder stages, frontend_dtype for vq02); results are
cast back to the torch module's dtype so the surrounding code sees what it always sees.
`apply_backends` logs the choice of every stage once; a requested backend that cannot run
raises `BackendUnavailableError`.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from ..config import BACKEND_STAGES, RuntimeConfig
from ..errors import InvalidInputError
from ..models.flow import CausalConditionalCFM, DiT, DiTCache, FlowModel, UpsampleConformerEncoderV2
from ..models.hift import HiFTGenerator
from ..models.vq02_encoder import SANMStreamingEncoder, VQ02EncoderState
from .graphs import GraphSpec, graph_spec
from .onnx_dit_chunk import empty_cache
from .store import GraphSource

log = logging.getLogger("editx")

Runner = Callable[..., tuple[torch.Tensor, ...]]


# -- backend objects --------------------------------------------------------------------
class DiTBackend(nn.Module):
    """Stands in for `DiT` inside `CausalConditionalCFM`: `forward` and `forward_chunk` on two graphs."""

    def __init__(self, dit: DiT, whole: Runner, chunk: Runner) -> None:
        super().__init__()
        self.cfg = dit.cfg
        self.out_dtype = dit.in_proj.weight.dtype
        self.whole, self.chunk = whole, chunk

    def forward(self, x, mask, mu, t, spks, cond) -> torch.Tensor:
        """As `DiT.forward`; mask `[B, 1, T]` or None (a `[B, T, T]` mask has no graph)."""
        if mask is None:
            mask = torch.ones(x.shape[0], 1, x.shape[2], device=x.device)
        elif mask.dim() != 3 or mask.shape[1] != 1:
            raise InvalidInputError(f"mask: the exported DiT takes a [B, 1, T] key mask, got {tuple(mask.shape)} "
                                    "(run the dit stage on backend 'torch' for query x key masks)")
        (velocity,) = self.whole(x, mask, mu, t, spks, cond)
        return velocity.to(x.device, self.out_dtype)

    def forward_chunk(self, x, mu, t, spks, cond, cache: Optional[DiTCache]) -> tuple[torch.Tensor, DiTCache]:
        """As `DiT.forward_chunk`; cache None = a stream's first step (empty cache, zero conv history)."""
        if cache is None:
            cache = empty_cache(self.cfg, x.shape[0], x)
        velocity, k, v, conv = self.chunk(x, mu, t, spks, cond, cache.k, cache.v, cache.conv)
        dev, dt = x.device, self.out_dtype
        return velocity.to(dev, dt), DiTCache(k=k.to(dev, dt), v=v.to(dev, dt), conv=conv.to(dev, dt))


class FlowEncoderBackend(nn.Module):
    """Stands in for `UpsampleConformerEncoderV2`: whole-sequence `forward` on the graph;
    streaming `forward_chunk` (no graph) stays on the torch encoder, which is logged."""

    def __init__(self, encoder: UpsampleConformerEncoderV2, run: Runner, backend: str) -> None:
        super().__init__()
        self.cfg = encoder.cfg
        self.pre_lookahead_len = encoder.pre_lookahead_len
        self.out_dtype = encoder.after_norm.weight.dtype
        self.run, self.backend = run, backend
        object.__setattr__(self, "_torch_encoder", encoder)  # not a child: its weights belong to the flow model
        self._chunk_logged = False

    def forward(self, xs: torch.Tensor, lengths: torch.Tensor | None = None, block_sizes=None) -> torch.Tensor:
        """xs `[B, T, D]` → `[B, 2T, D]`; only all-valid sequences (no lengths / blocks) have a graph."""
        if block_sizes is not None or (lengths is not None and bool((lengths.to(xs.device) != xs.shape[1]).any())):
            raise InvalidInputError("lengths / block_sizes: the exported flow encoder runs whole, unpadded "
                                    "sequences only (run flow_encoder on backend 'torch' for masks)")
        (out,) = self.run(xs)
        return out.to(xs.device, self.out_dtype)

    def forward_chunk(self, xs, cache, last):
        if not self._chunk_logged:
            self._chunk_logged = True
            log.info("flow_encoder: streaming chunks run on torch (only the whole-sequence encoder is exported); "
                     "whole sequences run on %s", self.backend)
        return self._torch_encoder.forward_chunk(xs, cache, last)


class HiFTDecodeBackend:
    """Stands in for `HiFTGenerator.decode(mel, source)` → speech `[B, 480·T]` float32."""

    def __init__(self, hift: HiFTGenerator, run: Runner) -> None:
        self.hift, self.run = hift, run

    def __call__(self, mel: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        mel = self.hift._check_mel(mel, "mel")
        batch, _, frames = mel.shape
        self.hift._check_source(source, "source", batch, frames * self.hift.config.upsample_scale, exact=True)
        (speech,) = self.run(mel, source)
        return speech.to(mel.device, torch.float32)


class VQ02ChunkBackend:
    """Stands in for `SANMStreamingEncoder.forward_chunk(feats_chunk, state)` → (out, next state).

    The graph returns every layer's cache untruncated; upstream's look-back rule is applied
    here, exactly as `SANMAttention._next_kv_cache` does it.
    """

    def __init__(self, encoder: SANMStreamingEncoder, run: Runner) -> None:
        self.encoder, self.run = encoder, run

    def __call__(self, feats_chunk: torch.Tensor, state: VQ02EncoderState) -> tuple[torch.Tensor, VQ02EncoderState]:
        enc = self.encoder
        enc._check_chunk(feats_chunk, state)
        cfg, dtype = enc.cfg, enc._param_dtype()
        cache_k, cache_v = self._stacked_cache(state, feats_chunk)
        position = torch.tensor([state.position], dtype=torch.int64)
        out, overlap, new_k, new_v = self.run(feats_chunk, state.overlap, position, cache_k, cache_v)
        dev = feats_chunk.device
        new_k, new_v = new_k.to(dev, dtype), new_v.to(dev, dtype)
        keep = cfg.kv_cache_frames
        kv = []
        for i, old in enumerate(state.kv):
            if keep == 0:
                kv.append(None)
            elif old is None or keep is None:  # the first block is cached whole (upstream)
                kv.append((new_k[i], new_v[i]))
            else:
                kv.append((new_k[i][:, :, -keep:], new_v[i][:, :, -keep:]))
        next_state = VQ02EncoderState(overlap=overlap.to(dev, dtype), position=state.position + feats_chunk.shape[1],
                                      kv=tuple(kv))
        return out.to(dev, dtype), next_state

    def _stacked_cache(self, state: VQ02EncoderState, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.encoder.cfg
        present = [kv is not None for kv in state.kv]
        if not any(present):
            empty = like.new_zeros(len(state.kv), state.batch, cfg.attention_heads, 0, cfg.d_k, dtype=torch.float32)
            return empty, empty
        if not all(present):
            raise InvalidInputError("state: some vq02 layers have a kv cache and some do not; "
                                    "use a state from this encoder's init_state()/forward_chunk")
        return torch.stack([k for k, _ in state.kv]), torch.stack([v for _, v in state.kv])


# -- runners ----------------------------------------------------------------------------
class RunnerFactory:
    """Builds the onnxruntime / TensorRT runner of one graph for a runtime config."""

    def __init__(self, config: RuntimeConfig) -> None:
        self.config = config
        self.graphs = GraphSource(config.export_dir)

    def __call__(self, backend: str, name: str, model: nn.Module, precision_dtype: torch.dtype) -> Runner:
        spec = graph_spec(name)
        if backend == "onnxruntime":
            from .ort import OrtGraph, import_onnxruntime, providers_for

            import_onnxruntime()
            providers_for(self.config.device)  # fail before spending time on the export
            return OrtGraph(self.graphs.onnx(name, model), spec, self.config.device, model)
        if backend == "tensorrt":
            return self._tensorrt(spec, model, precision_dtype)
        raise InvalidInputError(f"backend {backend!r} has no graph runner")

    def _tensorrt(self, spec: GraphSpec, model: nn.Module, dtype: torch.dtype) -> Runner:
        from .graphs import sha256_bytes
        from .tensorrt import DTYPE_PRECISION, PlanCache, PlanKey, TrtGraph, build_plan, default_profiles, \
            gpu_name, require_tensorrt

        trt = require_tensorrt(self.config.device)
        onnx = self.graphs.onnx(spec.name, model)
        profiles = default_profiles(spec, model)
        precision = DTYPE_PRECISION[dtype]
        key = PlanKey(spec.name, sha256_bytes(onnx), gpu_name(self.config.device), trt.__version__, precision,
                      tuple(profiles))
        plan = PlanCache(plan_cache_dir(self.config)).get_or_build(
            key, lambda: build_plan(onnx, profiles, precision, what=spec.name))
        return TrtGraph(plan, spec, profiles, self.config.device, model)


def plan_cache_dir(config: RuntimeConfig) -> Path:
    """`<export_dir>/tensorrt`, or `~/.cache/editx/tensorrt` without an export dir."""
    if config.export_dir is not None:
        return Path(config.export_dir) / "tensorrt"
    return Path.home() / ".cache" / "editx" / "tensorrt"


# -- wiring -----------------------------------------------------------------------------
def apply_backends(components, config: RuntimeConfig, factory: Callable | None = None):
    """`components` with every non-torch stage swapped in on model views (see module doc).

    Logs the backend of every stage once. Returns `components` itself when every stage is torch.
    """
    choice = dict(config.backends)
    log.info("stage backends: %s (device %s)", ", ".join(f"{s}={choice[s]}" for s in BACKEND_STAGES), config.device)
    if all(b == "torch" for b in choice.values()):
        return components
    factory = factory or RunnerFactory(config)

    def make(stage: str, graph: str, model: nn.Module) -> Runner:
        return factory(choice[stage], graph, model, stage_dtype(config, stage))

    return replace(components, **stage_views(components, choice, make))


def stage_views(models, choice: dict[str, str], make: Callable[[str, str, nn.Module], Runner]) -> dict:
    """{"flow" / "hift" / "vq02": view} for the stages `choice` puts on a non-torch backend.

    models: anything with `flow`, `hift`, `vq02`; make(stage, graph name, torch module) → runner.
    """
    flow, hift, vq02 = models.flow, models.hift, models.vq02
    views = {}
    dit = encoder = None
    if choice.get("dit", "torch") != "torch":
        est = flow.decoder.estimator
        dit = DiTBackend(est, make("dit", "dit", est), make("dit", "dit_chunk", est))
    if choice.get("flow_encoder", "torch") != "torch":
        encoder = FlowEncoderBackend(flow.encoder, make("flow_encoder", "flow_encoder", flow.encoder),
                                     choice["flow_encoder"])
    if dit is not None or encoder is not None:
        views["flow"] = flow_view(flow, dit=dit, encoder=encoder)
    if choice.get("hift", "torch") != "torch":
        views["hift"] = method_view(hift, "decode", HiFTDecodeBackend(hift, make("hift", "hift_decode", hift)))
    if choice.get("vq02", "torch") != "torch":
        views["vq02"] = method_view(vq02, "forward_chunk", VQ02ChunkBackend(vq02, make("vq02", "vq02_chunk", vq02)))
    return views


def stage_dtype(config: RuntimeConfig, stage: str) -> torch.dtype:
    """The dtype a stage's torch module is loaded in (TensorRT builds its plan in that precision)."""
    return config.frontend_dtype if stage == "vq02" else config.decoder_dtype


def flow_view(flow: FlowModel, dit: nn.Module | None = None, encoder: nn.Module | None = None) -> FlowModel:
    """A FlowModel sharing `flow`'s weights with its DiT and/or encoder swapped (`flow` is unchanged)."""
    view = copy.copy(flow)
    object.__setattr__(view, "_modules", dict(flow._modules))  # own child table: swaps stay on the view
    if dit is not None:
        view.decoder = CausalConditionalCFM(dit, flow.decoder.inference_cfg_rate)
    if encoder is not None:
        view.encoder = encoder
    return view


def method_view(module: nn.Module, method: str, replacement: Callable) -> nn.Module:
    """A shallow copy of `module` (same weights) whose `method` is `replacement`."""
    if not callable(getattr(module, method, None)):
        raise InvalidInputError(f"{type(module).__name__} has no method {method!r} to replace")
    view = copy.copy(module)
    object.__setattr__(view, method, replacement)
    return view
