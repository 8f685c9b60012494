"""Run an exported graph with ONNX Runtime on torch tensors (CPU or CUDA execution provider).

The execution provider follows the device the runtime runs on: a CPU runtime uses the
CPU EP, a CUDA runtime the CUDA EP. A CUDA runtime whose onnxruntime lacks the CUDA EP,
or whose CUDA EP fails to load (onnxruntime then quietly keeps only the CPU EP), is a
`BackendUnavailableError`, never a silent move of the stage to the CPU.

CPU: tensors go in and out through numpy (zero-copy for contiguous float32 CPU tensors).
CUDA: inputs and outputs stay on the GPU through an IOBinding on torch-owned buffers
(output shapes come from the graph's `output_shapes`).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..errors import BackendUnavailableError, CheckpointError, InvalidInputError
from .graphs import GraphSpec

log = logging.getLogger("editx")

_NUMPY_DTYPES = {torch.float32: np.float32, torch.int64: np.int64}


def import_onnxruntime():
    """The onnxruntime module, or BackendUnavailableError saying how to get it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError("backend 'onnxruntime' requested but onnxruntime is not installed "
                                      "(pip install onnxruntime, or onnxruntime-gpu for CUDA)") from exc
    return onnxruntime


def providers_for(device: torch.device) -> list:
    """Execution providers for a runtime on `device` (see module doc); raises if CUDA EP is missing."""
    ort = import_onnxruntime()
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise BackendUnavailableError(
            f"backend 'onnxruntime' on {device} needs the CUDA execution provider, but this onnxruntime "
            f"offers only {available} (install onnxruntime-gpu, or run the stage on backend 'torch')")
    return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]


class OrtGraph:
    """One onnxruntime session for one exported graph; call it with torch tensors in `spec.inputs` order.

    model: ONNX bytes or a path; ref_module: the torch module it was exported from (only
    its config is read, for output shapes on CUDA).
    """

    def __init__(self, model: bytes | str | Path, spec: GraphSpec, device: torch.device,
                 ref_module: torch.nn.Module | None = None, threads: int = 0) -> None:
        ort = import_onnxruntime()
        self.spec, self.device, self.ref_module = spec, torch.device(device), ref_module
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        source = model if isinstance(model, bytes) else str(model)
        if not isinstance(model, bytes) and not Path(model).is_file():
            raise CheckpointError(f"missing ONNX graph {spec.name}: expected file {model}")
        providers = providers_for(self.device)
        try:
            self.session = ort.InferenceSession(source, sess_options=opts, providers=providers)
        except Exception as exc:
            raise CheckpointError(f"cannot load ONNX graph {spec.name}: {exc}") from exc
        active = self.session.get_providers()
        if self.device.type == "cuda" and active[0] != "CUDAExecutionProvider":
            raise BackendUnavailableError(
                f"onnxruntime could not start its CUDA execution provider for {spec.name} (active: {active}); "
                "check the CUDA / cuDNN libraries onnxruntime-gpu needs")
        names = [i.name for i in self.session.get_inputs()]
        if tuple(names) != spec.inputs:
            raise CheckpointError(f"ONNX graph {spec.name}: inputs {names}, expected {list(spec.inputs)}")
        self.provider = active[0]

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Inputs in `spec.inputs` order (floats are run as float32, ints as int64) → outputs on `device`."""
        if len(inputs) != len(self.spec.inputs):
            raise InvalidInputError(f"{self.spec.name}: expected {len(self.spec.inputs)} inputs "
                                    f"{list(self.spec.inputs)}, got {len(inputs)}")
        tensors = [_graph_dtype(t) for t in inputs]
        if self.device.type == "cuda":
            return self._run_cuda(tensors)
        feeds = {n: t.detach().cpu().contiguous().numpy() for n, t in zip(self.spec.inputs, tensors)}
        outs = self.session.run(list(self.spec.outputs), feeds)
        return tuple(torch.from_numpy(o) for o in outs)

    def _run_cuda(self, tensors: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        index = self.device.index or 0
        binding = self.session.io_binding()
        keep = []
        for name, t in zip(self.spec.inputs, tensors):
            t = t.detach().to(self.device).contiguous()
            keep.append(t)
            if t.numel() == 0:  # an empty cache: nothing to point at, let onnxruntime copy the empty array
                binding.bind_cpu_input(name, np.empty(tuple(t.shape), dtype=_NUMPY_DTYPES[t.dtype]))
            else:
                binding.bind_input(name, "cuda", index, _NUMPY_DTYPES[t.dtype], tuple(t.shape), t.data_ptr())
        shapes = self.spec.output_shapes(self.ref_module, {n: tuple(t.shape) for n, t in zip(self.spec.inputs, keep)})
        outputs = []
        for name in self.spec.outputs:
            out = torch.empty(shapes[name], dtype=torch.float32, device=self.device)
            outputs.append(out)
            binding.bind_output(name, "cuda", index, np.float32, tuple(out.shape), out.data_ptr())
        # onnxruntime runs on its own CUDA stream: make torch's pending writes visible first.
        torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return tuple(outputs)


def _graph_dtype(t: torch.Tensor) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise InvalidInputError(f"expected a torch tensor, got {type(t).__name__}")
    return t.to(torch.float32) if t.dtype.is_floating_point else t.to(torch.int64)
