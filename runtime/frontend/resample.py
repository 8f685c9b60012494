"""Band-limited resampling equal to upstream's torchaudio calls, plus a fast soxr option.

Upstream resamples with torchaudio's windowed-sinc method (`sinc_interp_hann`,
`lowpass_filter_width` 6, `rolloff` 0.99). The rates are reduced by their gcd to
`orig/g -> new/g`; every output phase `j` (0 <= j < new/g) has its own FIR filter and
one strided conv1d applies all of them: output sample `j + k*new/g` uses input samples
around `k*orig/g`.

Two upstream call sites build the filter bank differently, which changes it by ~1e-7:
`transforms.Resample` (the tokenizer's 16 kHz path) builds it in float64 and stores it as
float32 (`kernel_precision="float64"`), `functional.resample` (prompt mel, CAM++ fbank)
builds it in the waveform's dtype (`kernel_precision="input"`).
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidInputError

KernelPrecision = Literal["float64", "input"]


def resample(
    wav: torch.Tensor,
    orig_sr: int,
    new_sr: int,
    *,
    method: Literal["sinc", "soxr"] = "sinc",
    kernel_precision: KernelPrecision = "float64",
    lowpass_filter_width: int = 6,
    rolloff: float = 0.99,
) -> torch.Tensor:
    """Resample `wav: [..., N]` from `orig_sr` to `new_sr` -> `[..., ceil(N * new_sr / orig_sr)]`.

    `method="sinc"` reproduces torchaudio's default resampler to float rounding
    (see the module doc for `kernel_precision`). `method="soxr"` uses libsoxr's HQ
    resampler: faster on long audio, but it does NOT bit-match upstream (different
    filter), so use it only where parity with upstream features is not needed; its output
    is cut / zero-padded to the same length as the sinc path.
    Equal rates return `wav` unchanged. Half-precision input is computed in float32 and
    returned in its own dtype.
    """
    orig_sr, new_sr = _checked_rate(orig_sr, "orig_sr"), _checked_rate(new_sr, "new_sr")
    if not isinstance(wav, torch.Tensor) or not wav.is_floating_point():
        raise InvalidInputError(f"wav: expected a floating-point tensor, got {getattr(wav, 'dtype', type(wav))}")
    if orig_sr == new_sr:
        return wav
    if wav.shape[-1] == 0:
        raise InvalidInputError("wav: no samples to resample")
    if method == "sinc":
        return _sinc_resample(wav, orig_sr, new_sr, kernel_precision, lowpass_filter_width, rolloff)
    if method == "soxr":
        return _soxr_resample(wav, orig_sr, new_sr)
    raise InvalidInputError(f"method: expected 'sinc' or 'soxr', got {method!r}")


def resampled_length(num_samples: int, orig_sr: int, new_sr: int) -> int:
    """Output length of `resample` for `num_samples` input samples: ceil(N * new / orig) over gcd-reduced rates."""
    if orig_sr == new_sr:
        return num_samples
    g = math.gcd(orig_sr, new_sr)
    return math.ceil((new_sr // g) * num_samples / (orig_sr // g))


def sinc_resample_kernel(
    orig: int,
    new: int,
    *,
    lowpass_filter_width: int = 6,
    rolloff: float = 0.99,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, int]:
    """Polyphase windowed-sinc filter bank for gcd-reduced rates `orig -> new`.

    Returns `(kernel [new, 1, 2*width + orig], width)`. `dtype=None` builds it in float64
    and returns float32 (torchaudio `transforms.Resample`); a float dtype builds and
    returns it in that dtype (torchaudio `functional.resample`). The arithmetic order
    follows torchaudio's so the float32 roundings agree.
    """
    if lowpass_filter_width <= 0:
        raise InvalidInputError(f"lowpass_filter_width: expected > 0, got {lowpass_filter_width}")
    base_freq = min(orig, new) * rolloff  # cutoff below both Nyquists (anti-aliasing)
    width = math.ceil(lowpass_filter_width * orig / base_freq)
    idx_dtype = dtype if dtype is not None else torch.float64
    # idx: input-sample offsets (in input periods) covered by the filter: [1, 1, K]
    idx = torch.arange(-width, width + orig, dtype=idx_dtype)[None, None] / orig
    # Phase offsets j/new. With dtype=None torchaudio divides an int64 arange, which yields
    # the default float32 before the float64 add; keep that rounding.
    phases = torch.arange(0, -new, -1, dtype=dtype)[:, None, None] / new
    t = phases + idx  # t: [new, 1, K]
    t *= base_freq
    t = t.clamp_(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t *= math.pi
    scale = base_freq / orig
    kernels = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t)
    kernels *= window * scale
    if dtype is None:
        kernels = kernels.to(torch.float32)
    return kernels, width


# -- sinc path ----------------------------------------------------------------------------
def _sinc_resample(wav, orig_sr, new_sr, kernel_precision, lowpass_filter_width, rolloff):
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    out_dtype = wav.dtype
    x = wav.float() if wav.dtype in (torch.float16, torch.bfloat16) else wav
    if kernel_precision == "float64":
        kernel, width = _cached_kernel(orig, new, lowpass_filter_width, rolloff, None)
    elif kernel_precision == "input":
        kernel, width = _cached_kernel(orig, new, lowpass_filter_width, rolloff, x.dtype)
    else:
        raise InvalidInputError(f"kernel_precision: expected 'float64' or 'input', got {kernel_precision!r}")
    kernel = kernel.to(device=x.device, dtype=x.dtype)

    shape = x.shape
    flat = x.reshape(-1, shape[-1])  # flat: [B, N]
    length = flat.shape[-1]
    padded = F.pad(flat, (width, width + orig))
    with _no_tf32():
        y = F.conv1d(padded[:, None], kernel, stride=orig)  # y: [B, new, n_blocks]
    y = y.transpose(1, 2).reshape(flat.shape[0], -1)  # interleave phases -> [B, new * n_blocks]
    target = math.ceil(new * length / orig)
    y = y[..., :target]
    return y.reshape(shape[:-1] + (y.shape[-1],)).to(out_dtype)


@lru_cache(maxsize=32)
def _cached_kernel(orig, new, lowpass_filter_width, rolloff, dtype):
    kernel, width = sinc_resample_kernel(
        orig, new, lowpass_filter_width=lowpass_filter_width, rolloff=rolloff, dtype=dtype
    )
    return kernel, width


def _no_tf32():
    """cuDNN convolutions default to TF32 on Ampere+; features must be plain fp32."""
    cudnn = torch.backends.cudnn
    return cudnn.flags(
        enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic, allow_tf32=False
    )


# -- soxr path ----------------------------------------------------------------------------
def _soxr_resample(wav, orig_sr, new_sr):
    import soxr

    shape = wav.shape
    flat = wav.detach().float().cpu().reshape(-1, shape[-1]).numpy()  # flat: [B, N]
    target = resampled_length(shape[-1], orig_sr, new_sr)
    # soxr takes [N, channels] and resamples the channels together.
    out = soxr.resample(np.ascontiguousarray(flat.T), orig_sr, new_sr, quality="HQ").T
    if out.shape[-1] < target:
        out = np.pad(out, ((0, 0), (0, target - out.shape[-1])))
    out = np.ascontiguousarray(out[:, :target], dtype=np.float32)
    y = torch.from_numpy(out).to(device=wav.device, dtype=wav.dtype)
    return y.reshape(shape[:-1] + (target,))


def _checked_rate(rate, name: str) -> int:
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)):
        raise InvalidInputError(f"{name}: expected a positive integer sample rate, got {rate!r}")
    if rate <= 0 or int(rate) != rate:
        raise InvalidInputError(f"{name}: expected a positive integer sample rate, got {rate!r}")
    return int(rate)
