"""Silence trimming of the tokenizer's 16 kHz signal (upstream `utils.trim_silence`).

1. `librosa.effects.trim(top_db=20, frame_length=512, hop_length=128)`: RMS per frame of
   the zero-padded (centered) signal, in dB relative to the loudest frame; the kept span
   runs from the first frame above -20 dB to one hop past the last one.
2. A fixed window around that span: keep 0.05 s (800 samples) before it (zero-padding
   on the left when the span starts earlier), and force the length to
   ceil(span / 240) * 240 + 4320 samples (0.05 s + 0.22 s) by cutting or zero-padding.

The RMS/dB steps are done with numpy in float32 in librosa's exact operation order so a
frame sitting on the -20 dB threshold falls on the same side as upstream.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from numpy.lib.stride_tricks import as_strided

from ..errors import InvalidInputError

TRIM_TOP_DB = 20.0
TRIM_FRAME_LENGTH = 512
TRIM_HOP_LENGTH = 128


@dataclass(slots=True, frozen=True)
class TrimWindow:
    """Where the trimmed signal comes from: `pad(wav[src_start:], (pad_left, 0))` cut / zero-padded to `out_len`."""

    src_start: int
    pad_left: int
    out_len: int

    def as_list(self) -> list[int]:
        return [self.src_start, self.pad_left, self.out_len]


def nonsilent_span(
    wav, top_db: float = TRIM_TOP_DB, frame_length: int = TRIM_FRAME_LENGTH, hop_length: int = TRIM_HOP_LENGTH
) -> tuple[int, int]:
    """`librosa.effects.trim(wav, top_db, frame_length, hop_length)[1]`: the non-silent `[start, end)` in samples.

    `wav`: mono `[N]` or `[1, N]` (numpy or torch, computed in float32). `(0, 0)` when no
    frame is loud enough (which cannot happen with ref = max unless the signal is empty).
    """
    y = _mono_float32(wav)
    db = _frame_db(y, frame_length, hop_length)
    loud = np.flatnonzero(db > -top_db)
    if loud.size == 0:
        return 0, 0
    start = int(loud[0]) * hop_length
    end = min(y.shape[-1], (int(loud[-1]) + 1) * hop_length)
    return start, end


def trim_window(
    start: int,
    end: int,
    sample_rate: int = 16000,
    keep_left_s: float = 0.05,
    keep_right_s: float = 0.22,
    hop_size: int = 240,
) -> TrimWindow:
    """Upstream's window around the non-silent span `[start, end)` (see the module doc)."""
    num_frames = int(math.ceil(max(end - start, 0) / hop_size))
    keep_left = int(keep_left_s * sample_rate)
    shift = start - keep_left
    out_len = int(num_frames * hop_size + (keep_left_s + keep_right_s) * sample_rate)
    return TrimWindow(src_start=max(shift, 0), pad_left=max(-shift, 0), out_len=out_len)


def apply_trim_window(wav: torch.Tensor, window: TrimWindow) -> torch.Tensor:
    """Cut `wav [1, N]` (or `[N]`) to the window: `[1, window.out_len]`, zeros where it runs past the signal."""
    x = wav[None] if wav.dim() == 1 else wav
    body = x[:, window.src_start : window.src_start + max(window.out_len - window.pad_left, 0)]
    out = x.new_zeros((x.shape[0], window.out_len))
    take = min(body.shape[-1], window.out_len - window.pad_left)
    out[:, window.pad_left : window.pad_left + take] = body[:, :take]
    return out


def trim_silence(wav16k: torch.Tensor, sample_rate: int = 16000) -> tuple[torch.Tensor, tuple[int, int], TrimWindow]:
    """Upstream `trim_silence`: `wav16k [1, N]` -> `(trimmed [1, out_len], (start, end), window)`."""
    start, end = nonsilent_span(wav16k)
    window = trim_window(start, end, sample_rate=sample_rate)
    return apply_trim_window(wav16k, window), (start, end), window


# -- librosa's RMS -> dB, float32 ------------------------------------------------------------
def _frame_db(y: np.ndarray, frame_length: int, hop_length: int) -> np.ndarray:
    """dB of each frame's RMS relative to the loudest frame (librosa rms + amplitude_to_db, ref=np.max)."""
    half = frame_length // 2
    padded = np.pad(y, (half, half), mode="constant")  # centered frames
    n_frames = 1 + (padded.shape[0] - frame_length) // hop_length
    step = padded.strides[0]
    # frames: [frame_length, n_frames] view, the layout librosa's util.frame produces; the
    # float32 mean over axis 0 then sums in the same order as librosa's.
    frames = as_strided(padded, shape=(frame_length, n_frames), strides=(step, step * hop_length), writeable=False)
    power = np.mean(np.power(frames, 2, dtype=np.float32), axis=-2, keepdims=True)
    rms = np.sqrt(power)[0]  # rms: [n_frames]
    magnitude = np.abs(rms)
    ref = np.max(magnitude)
    power = np.square(magnitude)
    amin = 1e-5**2
    db = 10.0 * np.log10(np.maximum(amin, power))
    db -= 10.0 * np.log10(np.maximum(amin, np.abs(ref**2)))
    return db


def _mono_float32(wav) -> np.ndarray:
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().float().cpu().numpy()
    y = np.asarray(wav, dtype=np.float32)
    if y.ndim == 2 and y.shape[0] == 1:
        y = y[0]
    if y.ndim != 1:
        raise InvalidInputError(f"wav: expected mono [N] or [1, N], got shape {tuple(y.shape)}")
    if y.shape[0] == 0:
        raise InvalidInputError("wav: no samples to trim")
    return y
