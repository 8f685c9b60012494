"""TensorRT engines for the exported graphs: profiles, fp32 fallback policy, plan cache, runner.

Written against the TensorRT 10 Python API (`tensorrt` is imported lazily, only when an
engine is built or run):

* `build_plan`: `trt.Builder` → `create_network(0)` (explicit batch is the only mode in 10.x)
  → `trt.OnnxParser.parse` → `IBuilderConfig` with a workspace limit
  (`set_memory_pool_limit(MemoryPoolType.WORKSPACE, …)`), `BuilderFlag.FP16` / `BF16` and
  `OBEY_PRECISION_CONSTRAINTS` for the layers `keep_fp32` pins, one optimization profile
  per frame range (`create_optimization_profile` / `set_shape` / `add_optimization_profile`)
  → `build_serialized_network`.
* `PlanCache`: plans on disk keyed by (ONNX sha256, GPU name + compute capability, TensorRT
  version, precision, profiles, fp32 policy version): a plan is only valid for the exact
  graph, card family and TensorRT build it was made with.
* `TrtGraph`: `trt.Runtime.deserialize_cuda_engine`, one execution context per profile
  (created on first use, `set_optimization_profile_async`), I/O buffers preallocated at
  the profile's maximum shapes (torch CUDA tensors), `set_input_shape` /
  `set_tensor_address` / `execute_async_v3` on torch's current stream.

Why fp32 fallback layers: a naive fp16 plan of these graphs overflows or loses the signal
(peers report NaN and silent audio). The sinusoid of t·1000 (DiT time embedding) and of
frame positions (vq02 PE) need fp32 arguments; LayerNorm / softmax / reductions overflow
in fp16 sums; exp / pow / softplus overflow (HiFT magnitude head, GELU-tanh's x³, Mish);
the STFT / iSTFT convs of the vocoder carry the waveform. Everything else (the matmuls and
convs that are the cost) runs in reduced precision.

Nothing here is exercised on a machine without TensorRT except the pure logic (profiles,
profile selection, cache keys, the fp32 policy, availability errors), which is unit-tested.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from ..errors import BackendUnavailableError, CheckpointError, InvalidInputError
from .graphs import GraphSpec

log = logging.getLogger("editx")

MIN_TRT_MAJOR = 10
PRECISIONS = ("fp32", "fp16", "bf16")
DTYPE_PRECISION = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
# Bump when keep_fp32 changes: plans built under another policy are not reused.
FP32_POLICY_VERSION = 1
DEFAULT_WORKSPACE_BYTES = 4 << 30

Shape = tuple[int, ...]
SizeRange = tuple[int, int, int]  # (min, opt, max)

# Frame ranges the runtime builds profiles for, per graph (sizes as in GraphSpec.trace_sizes).
# dit: prompt + target mel frames of one offline decode (50 Hz; 4096 = 82 s), CFG batch 2.
# dit_chunk: a streaming chunk is ≤ 2·(48 + 3) = 102 mel frames (setup: the prompt, ≤ 30 s);
#   the cache holds prompt + 96 frames of left context.
# hift_decode: streaming chunks (≤ 110 frames with the 8-frame mel cache) and offline utterances.
# vq02_chunk: upstream feeds 4 LFR frames per call with a 16-frame look-back cache.
DEFAULT_RANGES: dict[str, list[dict[str, SizeRange]]] = {
    "dit": [{"frames": (8, 512, 1024)}, {"frames": (1024, 2048, 4096)}],
    "dit_chunk": [{"frames": (2, 102, 1536), "cached": (0, 1200, 2048)}],
    "flow_encoder": [{"frames": (1, 256, 2048)}],
    "hift_decode": [{"frames": (1, 110, 256)}, {"frames": (256, 1000, 4096)}],
    "vq02_chunk": [{"frames": (1, 4, 64), "cached": (0, 16, 2048)}],
}


# -- availability -----------------------------------------------------------------------
def import_tensorrt():
    """The tensorrt module (10.x or newer), or BackendUnavailableError saying why not."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError(
            "backend 'tensorrt' requested but the tensorrt Python package is not installed "
            "(pip install 'editx-rt[gpu]' on a CUDA machine)") from exc
    major = _major(getattr(trt, "__version__", "0"))
    if major < MIN_TRT_MAJOR:
        raise BackendUnavailableError(f"backend 'tensorrt' needs TensorRT >= {MIN_TRT_MAJOR}, found {trt.__version__}")
    return trt


def require_tensorrt(device: torch.device):
    """Check everything a TensorRT stage needs on `device`; returns the tensorrt module."""
    device = torch.device(device)
    if device.type != "cuda":
        raise BackendUnavailableError(f"backend 'tensorrt' runs on CUDA devices only; the runtime device is {device}")
    if not torch.cuda.is_available():
        raise BackendUnavailableError("backend 'tensorrt' requested but torch sees no CUDA device")
    return import_tensorrt()


def _major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 0


# -- profiles ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ShapeProfile:
    """min / opt / max shape of every input of one optimization profile."""

    shapes: tuple[tuple[str, Shape, Shape, Shape], ...]

    @classmethod
    def from_sizes(cls, spec: GraphSpec, model: torch.nn.Module, sizes: Mapping[str, SizeRange],
                   batch: int | None = None) -> "ShapeProfile":
        """Profile of `spec`'s inputs over size ranges, e.g. {"frames": (8, 512, 1024)}."""
        unknown = set(sizes) - set(spec.size_names)
        missing = set(spec.size_names) - set(sizes)
        if unknown or missing:
            raise InvalidInputError(f"{spec.name} profile: sizes {sorted(sizes)}; expected {list(spec.size_names)}")
        for name, rng in sizes.items():
            if len(rng) != 3 or not (0 <= rng[0] <= rng[1] <= rng[2]):
                raise InvalidInputError(f"{spec.name} profile: {name} range {rng} is not 0 <= min <= opt <= max")
        b = spec.batch if batch is None else batch
        corners = [spec.input_shapes(model, b, **{k: v[i] for k, v in sizes.items()}) for i in range(3)]
        return cls(tuple((n, tuple(corners[0][n]), tuple(corners[1][n]), tuple(corners[2][n])) for n in spec.inputs))

    def contains(self, shapes: Mapping[str, Sequence[int]]) -> bool:
        """True when every input shape lies within [min, max] of this profile."""
        for name, lo, _, hi in self.shapes:
            got = tuple(shapes.get(name, ()))
            if len(got) != len(lo) or any(not (a <= g <= b) for a, g, b in zip(lo, got, hi)):
                return False
        return True

    def max_shapes(self) -> dict[str, Shape]:
        return {name: hi for name, _, _, hi in self.shapes}

    def volume(self, corner: int = 3) -> int:
        """Elements of all inputs at the min (1), opt (2) or max (3) shapes."""
        return sum(_numel(entry[corner]) for entry in self.shapes)

    def as_json(self) -> list:
        return [[n, list(lo), list(opt), list(hi)] for n, lo, opt, hi in self.shapes]


def default_profiles(spec: GraphSpec, model: torch.nn.Module) -> list[ShapeProfile]:
    return [ShapeProfile.from_sizes(spec, model, sizes) for sizes in DEFAULT_RANGES[spec.name]]


def select_profile(profiles: Sequence[ShapeProfile], shapes: Mapping[str, Sequence[int]], what: str = "graph") -> int:
    """Index of the profile to run `shapes` with: among those containing them, the one whose opt
    shapes (what TensorRT tuned its kernels for) are closest in size, then the narrowest.

    InvalidInputError when none contains them: the request is longer than any engine was built for.
    """
    fits = [i for i, p in enumerate(profiles) if p.contains(shapes)]
    if not fits:
        got = {k: tuple(v) for k, v in shapes.items()}
        ranges = [{n: (lo, hi) for n, lo, _, hi in p.shapes} for p in profiles]
        raise InvalidInputError(f"{what}: input shapes {got} fit no TensorRT profile {ranges}; "
                                "rebuild the engine with wider frame ranges")
    size = max(sum(_numel(tuple(s)) for s in shapes.values()), 1)

    def rank(i: int) -> tuple[float, int, int]:
        p = profiles[i]
        return abs(math.log(max(p.volume(2), 1) / size)), p.volume(3), -p.volume(1)

    return min(fits, key=rank)


# -- precision policy -------------------------------------------------------------------
FP32_LAYER_TYPES = ("NORMALIZATION", "REDUCE", "SOFTMAX")
FP32_OPS = ("Exp", "Pow", "Sqrt", "Reciprocal", "Log", "Sin", "Cos", "Erf", "Softplus", "Div", "Cumsum")
FP32_SCOPES = ("t_embedder", "/stft", "/istft")
# ONNX node names end in the op type, numbered after the first ("Exp", "Exp_3"); "Expand" is not "Exp".
_FP32_OP_NAME = re.compile(rf"^({'|'.join(FP32_OPS)})(_\d+)?(\b|_output|$)")


def keep_fp32(layer_name: str, layer_type: str) -> bool:
    """Whether a reduced-precision plan must keep this layer in fp32 (see module doc).

    layer_name: TensorRT's layer name, which is the ONNX node name (e.g.
    `/dit/blocks.0/attn/Softmax`), sometimes with a suffix; layer_type: `str(layer.type)`,
    e.g. `LayerType.NORMALIZATION`.
    """
    kind = layer_type.rsplit(".", 1)[-1].upper()
    if kind in FP32_LAYER_TYPES:
        return True
    if any(scope in layer_name for scope in FP32_SCOPES):
        return True
    return _FP32_OP_NAME.match(layer_name.rsplit("/", 1)[-1]) is not None


# -- plan cache -------------------------------------------------------------------------
@dataclass(frozen=True)
class PlanKey:
    """Everything a serialized plan depends on."""

    graph: str
    onnx_sha256: str
    gpu_name: str
    trt_version: str
    precision: str
    profiles: tuple[ShapeProfile, ...]
    policy_version: int = FP32_POLICY_VERSION

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise InvalidInputError(f"precision: {self.precision!r}; use one of {', '.join(PRECISIONS)}")
        if not self.profiles:
            raise InvalidInputError(f"{self.graph}: a TensorRT engine needs at least one shape profile")

    def as_json(self) -> dict:
        return {"graph": self.graph, "onnx_sha256": self.onnx_sha256, "gpu_name": self.gpu_name,
                "trt_version": self.trt_version, "precision": self.precision,
                "profiles": [p.as_json() for p in self.profiles], "policy_version": self.policy_version}

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.as_json(), sort_keys=True).encode()).hexdigest()

    @property
    def filename(self) -> str:
        return f"{self.graph}-{self.precision}-{self.digest[:24]}.plan"


class PlanCache:
    """Serialized plans in one directory: `<graph>-<precision>-<digest>.plan` + a `.json` with the key."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path(self, key: PlanKey) -> Path:
        return self.directory / key.filename

    def load(self, key: PlanKey) -> bytes | None:
        """The cached plan for `key`, or None (also when the sidecar key does not match exactly)."""
        plan, meta = self.path(key), self.path(key).with_suffix(".json")
        if not plan.is_file() or not meta.is_file():
            return None
        try:
            if json.loads(meta.read_text()) != key.as_json():
                return None
        except (OSError, ValueError):
            return None
        return plan.read_bytes()

    def store(self, key: PlanKey, plan: bytes) -> Path:
        """Write atomically (a crashed build never leaves a truncated plan behind)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(plan)
        os.replace(tmp, path)
        path.with_suffix(".json").write_text(json.dumps(key.as_json(), indent=1, sort_keys=True))
        return path

    def get_or_build(self, key: PlanKey, build: Callable[[], bytes]) -> bytes:
        plan = self.load(key)
        if plan is not None:
            log.info("TensorRT plan cache hit: %s", self.path(key).name)
            return plan
        log.info("building TensorRT engine %s (%s) — this takes a while once; cached at %s",
                 key.graph, key.precision, self.path(key))
        plan = build()
        self.store(key, plan)
        return plan


def gpu_name(device: torch.device) -> str:
    """Card name + compute capability (plans are specific to both)."""
    major, minor = torch.cuda.get_device_capability(device)
    return f"{torch.cuda.get_device_name(device)} (sm_{major}{minor})"


# -- building ---------------------------------------------------------------------------
def build_plan(onnx: bytes, profiles: Sequence[ShapeProfile], precision: str = "fp32",
               workspace_bytes: int = DEFAULT_WORKSPACE_BYTES, what: str = "graph") -> bytes:
    """Serialized TensorRT plan of an ONNX graph (see module doc for the API calls)."""
    trt = import_tensorrt()
    if precision not in PRECISIONS:
        raise InvalidInputError(f"precision: {precision!r}; use one of {', '.join(PRECISIONS)}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CheckpointError(f"TensorRT could not parse the {what} ONNX graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if precision != "fp32":
        config.set_flag(trt.BuilderFlag.FP16 if precision == "fp16" else trt.BuilderFlag.BF16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pinned = _pin_fp32_layers(trt, network)
        log.info("%s: %d of %d layers pinned to fp32 in the %s plan", what, pinned, network.num_layers, precision)
    for profile in profiles:
        opt_profile = builder.create_optimization_profile()
        for name, lo, opt, hi in profile.shapes:
            opt_profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(opt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CheckpointError(f"TensorRT failed to build an engine for {what} ({precision}); see the log above")
    return bytes(serialized)


def _pin_fp32_layers(trt, network) -> int:
    floats = (trt.float32, trt.float16, trt.bfloat16)
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if not keep_fp32(layer.name, str(layer.type)):
            continue
        outputs = [j for j in range(layer.num_outputs) if layer.get_output(j).dtype in floats]
        if not outputs:  # shape / index arithmetic: no precision to choose
            continue
        layer.precision = trt.float32
        for j in outputs:
            layer.set_output_type(j, trt.float32)
        pinned += 1
    return pinned


# -- running ----------------------------------------------------------------------------
class TrtGraph:
    """Runs one engine; call it with torch CUDA tensors in `spec.inputs` order → outputs (fresh tensors)."""

    def __init__(self, plan: bytes, spec: GraphSpec, profiles: Sequence[ShapeProfile], device: torch.device,
                 ref_module: torch.nn.Module) -> None:
        trt = require_tensorrt(device)
        self.trt, self.spec, self.profiles = trt, spec, list(profiles)
        self.device, self.ref_module = torch.device(device), ref_module
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise CheckpointError(f"TensorRT could not deserialize the {spec.name} plan (built by another version?)")
        if self.engine.num_optimization_profiles != len(self.profiles):
            raise CheckpointError(f"{spec.name} plan has {self.engine.num_optimization_profiles} profiles, "
                                  f"expected {len(self.profiles)}")
        self.dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in spec.inputs + spec.outputs}
        self._contexts: dict[int, object] = {}
        self._buffers: dict[int, dict[str, torch.Tensor]] = {}
        # Contexts and I/O buffers are reused across calls: one call at a time (requests may come
        # from several threads; the GPU serialises them anyway).
        self._lock = threading.Lock()
        self._done = None  # CUDA event after the last call's output copies (callers may use other streams)

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.spec.inputs):
            raise InvalidInputError(f"{self.spec.name}: expected inputs {list(self.spec.inputs)}, got {len(inputs)}")
        shapes = {n: tuple(t.shape) for n, t in zip(self.spec.inputs, inputs)}
        index = select_profile(self.profiles, shapes, self.spec.name)
        with self._lock:
            return self._run(index, inputs, shapes)

    def _run(self, index: int, inputs, shapes) -> tuple[torch.Tensor, ...]:
        context, buffers = self._context(index)
        stream = torch.cuda.current_stream(self.device)
        if self._done is not None:  # the previous call (maybe on another stream) is done with the buffers
            stream.wait_event(self._done)
        for name, t in zip(self.spec.inputs, inputs):
            view = _view(buffers[name], shapes[name])
            view.copy_(t.detach().to(self.device, self.dtypes[name]))
            context.set_input_shape(name, shapes[name])
            context.set_tensor_address(name, view.data_ptr())
        outputs = []
        for name in self.spec.outputs:
            view = _view(buffers[name], tuple(context.get_tensor_shape(name)))
            context.set_tensor_address(name, view.data_ptr())
            outputs.append(view)
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution of {self.spec.name} failed")
        # The buffers are reused by the next call: hand out copies (ordered on the same stream).
        result = tuple(o.float().clone() for o in outputs)
        self._done = torch.cuda.Event()
        self._done.record(stream)
        return result

    def _context(self, index: int):
        if index not in self._contexts:
            context = self.engine.create_execution_context()
            context.set_optimization_profile_async(index, torch.cuda.current_stream(self.device).cuda_stream)
            max_in = self.profiles[index].max_shapes()
            max_out = self.spec.output_shapes(self.ref_module, max_in)
            self._buffers[index] = {n: _alloc(s, self.dtypes[n], self.device) for n, s in {**max_in, **max_out}.items()}
            self._contexts[index] = context
        return self._contexts[index], self._buffers[index]


def _numel(shape: Shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _alloc(shape: Shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # Never a zero-size allocation: an empty tensor (a stream's first, empty cache) still
    # needs a valid address, and a view into a real buffer provides one.
    return torch.empty(max(_numel(shape), 1), dtype=dtype, device=device)


def _view(buffer: torch.Tensor, shape: Shape) -> torch.Tensor:
    return buffer[: _numel(shape)].view(shape)


def _torch_dtype(trt, dtype) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int64: torch.int64, trt.int32: torch.int32,
             trt.bool: torch.bool}
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    if dtype not in table:
        raise CheckpointError(f"TensorRT tensor type {dtype} is not supported by the runner")
    return table[dtype]
