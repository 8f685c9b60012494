"""vq02 linguistic tokenizer model: streaming Paraformer encoder + k-means codes.

`load_paraformer_encoder` reads upstream's FunASR model directory (`config.yaml`,
`model.pt`), `load_centroids` the k-means table (`linguistic_tokenizer.npy`,
float32 [1024, 512]) and `kmeans_codes` maps encoder frames to the nearest centroid
(upstream: argmin of `torch.cdist`, EX tokenizer.py `dump_label`).
The audio front end producing the 560-dim features lives in `editx.frontend`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, InvalidInputError
from ..loading.state_dict import load_checked, read_torch_state_dict, require_file
from ..loading.yaml_config import read_yaml
from .vq02_encoder import (
    UPSTREAM_CHUNK_SIZE,
    UPSTREAM_ENCODER_LOOK_BACK,
    SANMEncoderConfig,
    SANMStreamingEncoder,
    VQ02EncoderState,
    sinusoid_position_encoding,
)

__all__ = [
    "SANMEncoderConfig",
    "SANMStreamingEncoder",
    "VQ02EncoderState",
    "sinusoid_position_encoding",
    "load_paraformer_encoder",
    "read_paraformer_config",
    "load_centroids",
    "kmeans_codes",
    "feats_to_codes",
]

ENCODER_PREFIX = "encoder."
# Rows per block when computing centroid distances: bounds the [rows, K] float64 scratch.
_DISTANCE_BLOCK_ROWS = 4096


# -- loading --------------------------------------------------------------------------
def read_paraformer_config(
    model_dir: str | Path,
    chunk_size: Sequence[int] = UPSTREAM_CHUNK_SIZE,
    encoder_chunk_look_back: int = UPSTREAM_ENCODER_LOOK_BACK,
) -> SANMEncoderConfig:
    """Encoder config from `<model_dir>/config.yaml` (FunASR keys); CheckpointError if unusable."""
    path = Path(model_dir) / "config.yaml"
    raw = read_yaml(path, "Paraformer config.yaml")
    try:
        return SANMEncoderConfig.from_funasr_config(raw, chunk_size, encoder_chunk_look_back)
    except InvalidInputError as exc:
        raise CheckpointError(f"Paraformer config {path}: {exc}") from exc


def load_paraformer_encoder(
    model_dir: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    chunk_size: Sequence[int] = UPSTREAM_CHUNK_SIZE,
    encoder_chunk_look_back: int = UPSTREAM_ENCODER_LOOK_BACK,
) -> tuple[SANMStreamingEncoder, SANMEncoderConfig]:
    """Build the vq02 encoder from a FunASR Paraformer model dir and load `model.pt`.

    `model.pt` may be a bare state dict or nested under `state_dict` / `model`, with
    fp16 or fp32 tensors (loaded into fp32 parameters, then moved to `device`/`dtype`).
    Keys outside `encoder.*` (decoder, predictor, ctc, ...) are ignored; any missing,
    unexpected or mis-shaped `encoder.*` tensor raises CheckpointError naming it.
    `chunk_size` / `encoder_chunk_look_back` are the streaming call parameters
    (default: upstream tokenizer's [0, 4, 5] and 4).
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InvalidInputError(f"dtype: expected a floating-point torch.dtype, got {dtype!r}")
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"missing Paraformer model directory: {model_dir}")
    cfg = read_paraformer_config(model_dir, chunk_size, encoder_chunk_look_back)
    weights_path = require_file(model_dir / "model.pt", "Paraformer weights model.pt")
    state = read_torch_state_dict(weights_path, what="Paraformer weights")
    encoder_state = {k: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
    encoder = SANMStreamingEncoder(cfg)  # fp32 on CPU: fp16 files upcast exactly here
    # Load through a holder with an `encoder` child so errors name the file's own keys.
    holder = nn.Module()
    holder.encoder = encoder
    load_checked(holder, encoder_state, what=f"Paraformer encoder weights {weights_path}")
    encoder.eval()
    return encoder.to(device=device, dtype=dtype), cfg


def load_centroids(npy_path: str | Path, output_size: int | None = None) -> torch.Tensor:
    """k-means centroids from `linguistic_tokenizer.npy` -> float32 [K, D] (CPU).

    Raises CheckpointError when the file is missing/unreadable, not a finite 2-D
    float table with K >= 2, or (when `output_size` is given) D != output_size.
    """
    path = require_file(npy_path, "vq02 k-means centroids (linguistic_tokenizer.npy)")
    try:
        table = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise CheckpointError(f"cannot read vq02 centroids {path}: {exc}") from exc
    if table.ndim != 2 or not np.issubdtype(table.dtype, np.floating):
        raise CheckpointError(f"vq02 centroids {path}: expected a 2-D float array [K, D], got {table.dtype} {table.shape}")
    if table.shape[0] < 2:
        raise CheckpointError(f"vq02 centroids {path}: expected at least 2 centroids, got {table.shape[0]}")
    if output_size is not None and table.shape[1] != output_size:
        raise CheckpointError(
            f"vq02 centroids {path}: width {table.shape[1]} does not match the encoder output size {output_size}"
        )
    if not np.isfinite(table).all():
        raise CheckpointError(f"vq02 centroids {path}: contains NaN or Inf")
    return torch.from_numpy(np.ascontiguousarray(table, dtype=np.float32))


# -- k-means --------------------------------------------------------------------------
@torch.no_grad()
def kmeans_codes(enc_out: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest-centroid codes of encoder frames (upstream: argmin torch.cdist).

    enc_out: [B, N, D]; centroids: [K, D], K >= 2.
    Returns (codes [B, N] int64, top2_dist [B, N, 2] float32 = the two smallest
    Euclidean distances, ascending). Distances are computed in float64 on
    enc_out's device, so no rounding can flip a code between near-equal centroids
    (upstream's fp32 cdist has ~5e-7 error; fixture margins are >= 1e-4).
    """
    _check_kmeans_inputs(enc_out, centroids)
    b, n, d = enc_out.shape
    rows = enc_out.reshape(b * n, d).to(torch.float64)  # [B*N, D]
    table = centroids.to(device=enc_out.device, dtype=torch.float64)  # [K, D]
    table_sq = (table * table).sum(-1)  # [K]
    codes, top2 = [], []
    for start in range(0, rows.shape[0], _DISTANCE_BLOCK_ROWS):
        block = rows[start:start + _DISTANCE_BLOCK_ROWS]  # [r, D]
        # |x - c|^2 = |x|^2 + |c|^2 - 2 x.c; exact enough in float64 (no cancellation issue at fp32 scales).
        sq = (block * block).sum(-1, keepdim=True) + table_sq[None, :] - 2.0 * (block @ table.T)  # [r, K]
        dist = sq.clamp_min_(0.0).sqrt_()
        values, index = torch.topk(dist, 2, dim=-1, largest=False, sorted=True)  # [r, 2]
        codes.append(index[:, 0])
        top2.append(values)
    codes_t = torch.cat(codes).reshape(b, n).to(torch.int64)
    top2_t = torch.cat(top2).reshape(b, n, 2).to(torch.float32)
    return codes_t, top2_t


def _check_kmeans_inputs(enc_out: torch.Tensor, centroids: torch.Tensor) -> None:
    if not isinstance(enc_out, torch.Tensor) or enc_out.dim() != 3 or not torch.is_floating_point(enc_out):
        raise InvalidInputError(f"enc_out: expected a float [B, N, D] tensor, got {_describe(enc_out)}")
    if not isinstance(centroids, torch.Tensor) or centroids.dim() != 2 or not torch.is_floating_point(centroids):
        raise InvalidInputError(f"centroids: expected a float [K, D] tensor, got {_describe(centroids)}")
    if centroids.shape[0] < 2:
        raise InvalidInputError(f"centroids: expected at least 2 centroids, got {centroids.shape[0]}")
    if enc_out.shape[-1] != centroids.shape[-1]:
        raise InvalidInputError(
            f"enc_out: width {enc_out.shape[-1]} does not match the centroids' width {centroids.shape[-1]}"
        )
    if not torch.isfinite(enc_out).all():
        raise InvalidInputError("enc_out: contains NaN or Inf")


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


def feats_to_codes(
    encoder: SANMStreamingEncoder,
    centroids: torch.Tensor,
    feats: torch.Tensor,
    chunk_lengths: Sequence[int] | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """feats [B, N, 560] + chunk_lengths -> (enc_out [B, N, D], codes [B, N], top2_dist [B, N, 2])."""
    enc_out = encoder.encode(feats, chunk_lengths)
    codes, top2 = kmeans_codes(enc_out, centroids)
    return enc_out, codes, top2
