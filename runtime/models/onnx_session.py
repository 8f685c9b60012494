"""ONNX Runtime sessions for the front-end graphs (vq06 tokenizer, CAM++ speaker encoder).

Upstream runs both through onnxruntime (vq06 on the CUDA EP, CAM++ on the CPU EP,
ORT_ENABLE_ALL, 1 intra-op thread; spec §3.3, §5.2); on the CPU provider we use a few threads
(`intra_op_threads`). Input names are read from the
session, never hard-coded, because the real files name them differently from our
stand-ins.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailableError, CheckpointError

log = logging.getLogger("editx")
_logged: set[tuple[str, str]] = set()


def choose_providers(request: str, device_type: str, what: str) -> list[str]:
    """Execution providers for `request` ('auto' | 'cpu' | 'cuda'); logs the choice once per graph."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if request == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise BackendUnavailableError(
                f"{what}: onnx_provider 'cuda' requested but onnxruntime offers only {available} "
                "(install onnxruntime-gpu, or use onnx_provider='cpu')"
            )
        chosen = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    elif request == "auto" and device_type == "cuda" and "CUDAExecutionProvider" in available:
        chosen = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        chosen = ["CPUExecutionProvider"]
    key = (what, chosen[0])
    if key not in _logged:
        _logged.add(key)
        log.info("%s runs on onnxruntime %s", what, chosen[0])
    return chosen


def intra_op_threads(providers: list[str], requested: int | None) -> int:
    """Threads for one session: 1 on the CUDA provider (upstream's setting; the work is on the GPU),
    else `requested` or min(4, CPUs): a 500 MB graph on one CPU thread would hold a cold voice for
    half a second, and more than 4 would crowd the engine's own threads."""
    if providers[0] == "CUDAExecutionProvider":
        return 1
    return requested if requested is not None else max(1, min(4, os.cpu_count() or 1))


class OnnxGraph:
    """One onnxruntime session; `run` feeds inputs by position and returns every output."""

    def __init__(self, model: str | Path | bytes, providers: list[str], what: str, threads: int = 1) -> None:
        import onnxruntime as ort

        if not isinstance(model, bytes) and not Path(model).is_file():
            raise CheckpointError(f"missing {what}: expected ONNX file {model}")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads
        # Idle pool threads sleep instead of spinning: the same cores run torch's front end and the engine.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        src = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(src, sess_options=opts, providers=providers)
        except Exception as exc:
            raise CheckpointError(f"cannot load {what} ONNX graph {model if not isinstance(model, bytes) else '<bytes>'}: {exc}") from exc
        self.what = what
        self.input_names = [i.name for i in self.session.get_inputs()]

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        if len(inputs) != len(self.input_names):
            raise ValueError(f"{self.what}: graph takes {len(self.input_names)} inputs, got {len(inputs)}")
        return self.session.run(None, dict(zip(self.input_names, inputs)))
