"""CAM++ speaker encoder (3D-Speaker) through onnxruntime: fbank [1, T, 80] -> x-vector [1, 192]."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import InvalidInputError
from .onnx_session import OnnxGraph

XVECTOR_DIM = 192


class SpeakerEncoder:
    """Wraps campplus.onnx (upstream runs it on the CPU EP, spec §5.2)."""

    def __init__(self, graph: OnnxGraph) -> None:
        self.graph = graph

    def __call__(self, fbank: torch.Tensor) -> torch.Tensor:
        """fbank: [1, T, 80] mean-normalised kaldi fbank -> [1, 192] float32 (CPU)."""
        if fbank.dim() != 3 or fbank.shape[0] != 1 or fbank.shape[-1] != 80 or fbank.shape[1] == 0:
            raise InvalidInputError(f"speaker fbank must be [1, T>0, 80], got {tuple(fbank.shape)}")
        out = self.graph.run(fbank.detach().float().cpu().numpy().astype(np.float32))[0]
        vec = torch.from_numpy(np.asarray(out, dtype=np.float32).reshape(1, -1))
        if vec.shape[1] != XVECTOR_DIM:
            raise InvalidInputError(f"speaker encoder returned {vec.shape[1]} dims, expected {XVECTOR_DIM}")
        return vec
