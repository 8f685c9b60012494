"""vq06 semantic tokenizer: whisper-style log-mel -> S3 tokenizer v1 ONNX graph -> codes.

Upstream (spec §3.3): the trimmed 16 kHz signal is cut into pieces of at most 30 s
(480,000 samples), pieces under 480 samples are dropped, each piece becomes a
128-bin log-mel [1, 128, n // 160] and the graph returns 25 Hz codes in 0..4095.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import InvalidInputError
from .onnx_session import OnnxGraph

PIECE_SAMPLES = 30 * 16000  # the graph's positional table covers 30 s (1500 frames at 50 Hz)
MIN_PIECE_SAMPLES = 480     # upstream skips shorter tails
CODES_PER_SECOND = 25
CODEBOOK_SIZE = 4096


class Vq06Tokenizer:
    """Wraps the vq06 ONNX graph; stateless apart from the (thread-safe) ORT session."""

    def __init__(self, graph: OnnxGraph, check_rate: bool = True) -> None:
        self.graph = graph
        # Upstream asserts |codes - 25 * seconds| <= 2 per piece; our dummy stand-in honours it too.
        self.check_rate = check_rate

    def __call__(self, wav16: torch.Tensor) -> list[int]:
        """wav16: [1, N] or [N] float 16 kHz -> list of codes (0..4095), 25 per second."""
        from ..frontend.mel import whisper_log_mel

        x = wav16.reshape(-1).float().cpu()
        codes: list[int] = []
        for start in range(0, x.numel(), PIECE_SAMPLES):
            piece = x[start:start + PIECE_SAMPLES]
            if piece.numel() < MIN_PIECE_SAMPLES:
                continue
            feats = whisper_log_mel(piece[None], n_mels=128)  # [1, 128, T]
            feats_len = np.array([feats.shape[-1]], dtype=np.int32)
            out = self.graph.run(feats.numpy().astype(np.float32), feats_len)[0]
            piece_codes = np.asarray(out).reshape(-1).astype(np.int64).tolist()
            self._validate(piece_codes, piece.numel())
            codes.extend(piece_codes)
        return codes

    def _validate(self, codes: list[int], n_samples: int) -> None:
        expected = round(n_samples / 16000, 2) * CODES_PER_SECOND
        if self.check_rate and abs(len(codes) - expected) > 2:
            raise InvalidInputError(
                f"vq06 graph returned {len(codes)} codes for {n_samples} samples (expected ~{expected:.0f}); "
                "is speech_tokenizer_v1.onnx the right file?"
            )
        if codes and (min(codes) < 0 or max(codes) >= CODEBOOK_SIZE):
            raise InvalidInputError(f"vq06 graph returned codes outside 0..{CODEBOOK_SIZE - 1}")
