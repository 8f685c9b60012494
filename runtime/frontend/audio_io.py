"""Reading and writing audio, with the checks a request needs before any feature is computed.

Samples come back as float32 in [-1, 1] exactly as upstream's `torchaudio.load` gives them
for PCM WAV (int16 / 32768, int32 / 2**31), channels first: `[C, N]`. Every problem a
caller can cause (missing file, undecodable bytes, no samples, NaN/Inf, bad rate) is an
`AudioFormatError` naming the argument, never a crash deep inside a feature function.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
import soundfile as sf
import torch

from ..errors import AudioFormatError, InvalidInputError

AudioSource = Union[str, Path, bytes, bytearray, memoryview, BinaryIO]

# A channels-first array with more "channels" than this is almost surely [N, C].
_MAX_CHANNELS = 64

# Integer PCM is scaled like libsndfile / torchaudio: divide by 2**(bits-1).
_INT_SCALE = {np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2147483648.0, np.dtype(np.int8): 128.0}


def load_audio(source: AudioSource, *, what: str = "audio") -> tuple[torch.Tensor, int]:
    """Decode an audio file (path, bytes or binary file object) with soundfile.

    Returns `(wav, sample_rate)` with `wav: [C, N]` float32 in [-1, 1] (PCM scaled by
    1/2**(bits-1), float formats as stored). `what` names the argument in error messages.
    Raises AudioFormatError for a missing file, undecodable or empty data, NaN/Inf samples.
    """
    handle = _open_source(source, what)
    try:
        data, sample_rate = sf.read(handle, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioFormatError(f"{what}: cannot decode audio ({exc})") from exc
    # data: [N, C] -> wav: [C, N]
    wav = torch.from_numpy(np.ascontiguousarray(data.T))
    return _checked(wav, int(sample_rate), what)


def audio_from_array(array, sample_rate: int, *, what: str = "audio") -> tuple[torch.Tensor, int]:
    """Wrap in-memory samples (numpy or torch, `[N]` or channels-first `[C, N]`).

    Integer arrays are scaled like PCM (int16 / 32768, int32 / 2**31, uint8 centred on 128);
    float arrays are taken as they are (float64 is rounded to float32).
    Returns `(wav [C, N] float32, sample_rate)`.
    """
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu()
        if array.dtype in (torch.bfloat16, torch.float16):
            array = array.float()
        array = array.numpy()
    array = np.asarray(array)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise AudioFormatError(f"{what}: expected samples shaped [N] or [C, N], got shape {tuple(array.shape)}")
    if array.shape[0] > _MAX_CHANNELS and array.shape[1] <= _MAX_CHANNELS:
        raise AudioFormatError(
            f"{what}: shape {tuple(array.shape)} looks like [N, C]; pass channels first ([C, N])"
        )
    wav = torch.from_numpy(np.ascontiguousarray(_to_float32(array, what)))
    return _checked(wav, sample_rate, what)


def to_mono(wav: torch.Tensor) -> torch.Tensor:
    """Average the channels of `wav: [C, N]` (or `[N]`) into `[1, N]`, like upstream's mean(dim=0, keepdim=True).

    A single channel is returned as is (upstream only averages when C > 1).
    """
    if wav.dim() == 1:
        return wav[None, :]
    if wav.dim() != 2:
        raise InvalidInputError(f"wav: expected [C, N] or [N], got shape {tuple(wav.shape)}")
    if wav.shape[0] == 1:
        return wav
    return wav.mean(dim=0, keepdim=True)


def write_wav(path: str | Path | BinaryIO, samples, sample_rate: int) -> None:
    """Write `samples` (`[N]` or `[C, N]`, float in [-1, 1]) as 16-bit PCM WAV.

    This is soundfile's default subtype for WAV, which upstream's tts_infer uses between
    iterative edits, so a round trip through this file loses exactly what upstream loses.
    """
    sample_rate = _check_rate(sample_rate, "sample_rate")
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().float().cpu().numpy()
    arr = np.asarray(samples, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise InvalidInputError(f"samples: expected non-empty [N] or [C, N], got shape {tuple(arr.shape)}")
    if not np.isfinite(arr).all():
        raise InvalidInputError("samples: contains NaN or Inf")
    sf.write(path, arr.T, int(sample_rate), subtype="PCM_16", format="WAV")


# -- helpers -----------------------------------------------------------------------------
def _open_source(source: AudioSource, what: str):
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise AudioFormatError(f"{what}: empty byte string")
        return io.BytesIO(bytes(source))
    if isinstance(source, (str, Path)):
        p = Path(source)
        if not p.is_file():
            raise AudioFormatError(f"{what}: file not found: {p}")
        if p.stat().st_size == 0:
            raise AudioFormatError(f"{what}: file is empty: {p}")
        return str(p)
    if hasattr(source, "read"):
        return source
    raise AudioFormatError(f"{what}: expected a path, bytes or a binary file object, got {type(source).__name__}")


def _to_float32(array: np.ndarray, what: str) -> np.ndarray:
    if array.dtype in _INT_SCALE:
        return (array.astype(np.float64) / _INT_SCALE[array.dtype]).astype(np.float32)
    if array.dtype == np.uint8:
        return ((array.astype(np.float64) - 128.0) / 128.0).astype(np.float32)
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32)
    raise AudioFormatError(f"{what}: unsupported sample dtype {array.dtype} (expected float or int PCM)")


def _check_rate(sample_rate, what: str) -> int:
    """A positive whole number of Hz (an integral float such as 16000.0 is accepted)."""
    ok = not isinstance(sample_rate, bool) and isinstance(sample_rate, (int, float, np.integer, np.floating))
    if not ok or not sample_rate > 0 or int(sample_rate) != sample_rate:
        raise AudioFormatError(f"{what}: expected a positive integer sample rate, got {sample_rate!r}")
    return int(sample_rate)


def _checked(wav: torch.Tensor, sample_rate: int, what: str) -> tuple[torch.Tensor, int]:
    sample_rate = _check_rate(sample_rate, f"{what} sample rate")
    if wav.shape[-1] == 0 or wav.shape[0] == 0:
        raise AudioFormatError(f"{what}: contains no samples")
    if not torch.isfinite(wav).all():
        raise AudioFormatError(f"{what}: contains NaN or Inf samples")
    return wav, int(sample_rate)
