"""Per-prompt audio preprocessing (upstream `StepAudioTTS.preprocess_prompt_wav`, spec §2.1).

From one decoded prompt (any rate >= 16 kHz, any channel count):

* mono (channel mean), then the volume guard: a peak above 0.6 is scaled to exactly 0.6;
* `speech_feat` — the flow model's prompt mel, from the signal resampled to 24 kHz;
* `campplus_fbank` — CAM++'s input: 16 kHz Kaldi fbank (povey, dither 0) minus its time mean;
* the tokenizer signal — 16 kHz, peak-normalised to 0.999 (`wav16_norm`), then silence-trimmed
  (`wav16_trimmed`), which both vq02 and vq06 consume.

The mel and the x-vector input use the untrimmed, peak-0.6 signal; only the tokens see the
trimmed one. Upstream resamples with `functional.resample` for the first two and with
`transforms.Resample` for the tokenizer; the two build their filters at different precision
(see `resample.py`), and we follow each.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from ..errors import InvalidInputError
from .audio_io import to_mono
from .fbank import kaldi_fbank
from .mel import MelConfig, prompt_mel
from .resample import resample
from .trim import TrimWindow, trim_silence

PEAK_LIMIT = 0.6
TOKENIZER_SAMPLE_RATE = 16000
TOKENIZER_PEAK = 0.999
CAMPPLUS_SAMPLE_RATE = 16000


@dataclass(slots=True)
class TokenizerSignal:
    """The first half of `preprocess_prompt`: the guarded signal and what the tokenizers consume. The
    other half (`prompt_speech_feat`, `campplus_fbank` of `wav`) does not depend on it, so a caller
    may run the two halves concurrently (`engine.voice.encode_voice` does)."""

    wav: torch.Tensor  # [1, N] mono, peak-guarded, at the input rate
    peak_before_guard: float
    wav16_norm: torch.Tensor  # [1, N16]
    trim_index: tuple[int, int]
    trim_window: TrimWindow
    wav16_trimmed: torch.Tensor  # [1, trim_window.out_len]


@dataclass(slots=True)
class PromptAudio(TokenizerSignal):
    """Everything the pipeline needs from one prompt recording (shapes for batch 1): the tokenizer
    signal plus the decoder's conditioning inputs."""

    sample_rate: int  # of `wav`
    speech_feat: torch.Tensor  # [1, T_mel, 80] prompt mel (24 kHz, 50 frames/s)
    campplus_fbank: torch.Tensor  # [1, T_fb, 80] CAM++ input (16 kHz, 100 frames/s, mean-removed)


def preprocess_prompt(
    wav: torch.Tensor,
    sample_rate: int,
    mel_config: MelConfig = MelConfig(),
    precision: torch.dtype = torch.float64,
    resampler: str = "sinc",
) -> PromptAudio:
    """Run the whole per-prompt chain on `wav [C, N]` (or `[N]`) at `sample_rate` (>= 16 kHz).

    `precision` is the dtype of the spectral computations (see `mel.py`); the signals
    themselves are float32 exactly as upstream computes them. `resampler`: "sinc"
    (torchaudio-exact, upstream parity) or "soxr" (libsoxr HQ; faster on long audio, not
    bit-identical to upstream).
    """
    signal = tokenizer_signal(wav, sample_rate, resampler)
    return PromptAudio(
        **{f.name: getattr(signal, f.name) for f in fields(TokenizerSignal)},
        sample_rate=sample_rate,
        speech_feat=prompt_speech_feat(signal.wav, sample_rate, mel_config, precision, resampler),
        campplus_fbank=campplus_fbank(signal.wav, sample_rate, precision, resampler),
    )


def tokenizer_signal(wav: torch.Tensor, sample_rate: int, resampler: str = "sinc") -> TokenizerSignal:
    """Mono, volume guard, the tokenizers' 16 kHz signal and its silence trim, of `wav [C, N]` or `[N]`.
    Refuses rates below 16 kHz before any heavy work."""
    mono = to_mono(_float32(wav, "wav"))
    guarded, peak = peak_guard(mono)
    wav16 = tokenizer_wav16(guarded, sample_rate, resampler)
    trimmed, index, window = trim_silence(wav16)
    return TokenizerSignal(guarded, peak, wav16, index, window, trimmed)


def peak_guard(wav: torch.Tensor, limit: float = PEAK_LIMIT) -> tuple[torch.Tensor, float]:
    """Scale `wav [1, N]` so its peak is exactly `limit` if it is above; returns `(wav, peak before)`."""
    norm = torch.max(torch.abs(wav), dim=1, keepdim=True)[0]  # norm: [1, 1]
    peak = float(norm.max())
    if peak > limit:
        wav = wav / norm * limit
    return wav, peak


def prompt_speech_feat(
    wav: torch.Tensor,
    sample_rate: int,
    mel_config: MelConfig = MelConfig(),
    precision: torch.dtype = torch.float64,
    resampler: str = "sinc",
) -> torch.Tensor:
    """The flow model's prompt mel of `wav [1, N]`: resample to the mel rate, then `prompt_mel` -> `[1, T, 80]`."""
    wav24 = resample(wav, sample_rate, mel_config.sampling_rate, method=resampler, kernel_precision="input")
    return prompt_mel(wav24, mel_config, precision)


def campplus_fbank(wav: torch.Tensor, sample_rate: int, precision: torch.dtype = torch.float64,
                   resampler: str = "sinc") -> torch.Tensor:
    """CAM++'s input for `wav [1, N]` -> `[1, T, 80]` float32.

    16 kHz float signal (not x32768) -> Kaldi fbank (80 bins, povey, dither 0) minus its
    per-bin time mean. The 16 kHz signal is float32 as upstream's; the fbank runs in
    `precision` (see `mel.py`).
    """
    wav16 = resample(wav, sample_rate, CAMPPLUS_SAMPLE_RATE, method=resampler, kernel_precision="input")
    feats = kaldi_fbank(wav16.to(precision), CAMPPLUS_SAMPLE_RATE, num_mel_bins=80, dither=0.0)  # feats: [T, 80]
    return (feats - feats.mean(dim=0, keepdim=True))[None].float()


def tokenizer_wav16(wav: torch.Tensor, sample_rate: int, resampler: str = "sinc") -> torch.Tensor:
    """The tokenizer's 16 kHz signal `[1, N16]`: resample (float64-built filter), then x / max(max|x|, 0.01) * 0.999.

    Rates below 16 kHz are refused, as upstream's `resample_audio` asserts.
    """
    if sample_rate < TOKENIZER_SAMPLE_RATE:
        raise InvalidInputError(
            f"sample_rate: prompt audio at {sample_rate} Hz is below the {TOKENIZER_SAMPLE_RATE} Hz the tokenizer needs"
        )
    wav16 = resample(wav, sample_rate, TOKENIZER_SAMPLE_RATE, method=resampler, kernel_precision="float64")
    peak = torch.max(torch.abs(wav16))
    # Same operand types as upstream (0-dim tensor, or the python float floor) so the rounding agrees.
    denominator = peak if peak >= 0.01 else 0.01
    return wav16 / denominator * TOKENIZER_PEAK


def _float32(wav: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(wav, torch.Tensor) or not wav.is_floating_point():
        raise InvalidInputError(f"{name}: expected a floating-point tensor, got {getattr(wav, 'dtype', type(wav))}")
    if wav.shape[-1] == 0:
        raise InvalidInputError(f"{name}: contains no samples")
    if not torch.isfinite(wav).all():
        raise InvalidInputError(f"{name}: contains NaN or Inf samples")
    return wav.float() if wav.dtype != torch.float32 else wav
