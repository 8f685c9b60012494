"""The vq02 tokenizer's streaming front end (FunASR `WavFrontendOnline`, driven as `infer_encoder` drives it).

Upstream never runs this front end on a whole utterance: `infer_encoder` cuts the 16 kHz
signal into pieces of `chunk_size[1] * 960` samples (3840 = 240 ms for chunk_size [0, 4, 5])
and feeds them one by one, and the piece boundaries change the features. Per piece:

1. Prepend the samples the previous piece could not frame (sample carry-over); frame
   count `F = 1 + (L - 400) // 160` (0 if L < 400); carry `x[F * 160:]` to the next piece.
2. Kaldi fbank of all L samples scaled by 32768 (int16 range), hamming window, 25/10 ms,
   80 mels, with `dither * N(0, 1)` noise (upstream: dither 1.0, unseeded).
3. LFR (low frame rate) stacking, m = 7 frames, hop n = 6, after a splice cache of frames
   held back from earlier pieces. The very first fbank frame is repeated 3 times in front
   ((m - 1) // 2 of left context). A piece emits `ceil((T - 3) / 6)` stacked frames of its
   T cached + new frames, but only those whose 7 frames are all present; the rest wait in
   the cache (from frame 6 * emitted on). The final piece emits them anyway, padding with
   copies of the last frame.
4. Global CMVN `(x + shift) * scale` (optional).

The encoder is then called once per piece that emitted frames, so the per-piece frame
counts (`chunk_lengths`, [4]*k + [last] for 3840-sample pieces) are part of the output.
Upstream's in-memory float32 WAV round trip before this is lossless and is skipped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from ..errors import InvalidInputError
from ..loading.am_mvn import Cmvn
from .fbank import fbank_num_frames, kaldi_fbank

# One encoder chunk unit = one 60 ms LFR frame = 960 samples at 16 kHz; a piece is chunk_size[1] units.
SAMPLES_PER_CHUNK_UNIT = 960
INT16_SCALE = float(1 << 15)


@dataclass(slots=True)
class Vq02FrontendConfig:
    """`WavFrontendOnline` settings (Paraformer `config.yaml` `frontend_conf`) plus the piece size."""

    sample_rate: int = 16000
    window: str = "hamming"
    n_mels: int = 80
    frame_length_ms: int = 25
    frame_shift_ms: int = 10
    lfr_m: int = 7
    lfr_n: int = 6
    chunk_size: tuple[int, int, int] = (0, 4, 5)

    def __post_init__(self) -> None:
        self.chunk_size = tuple(int(c) for c in self.chunk_size)
        if len(self.chunk_size) != 3 or self.chunk_size[1] <= 0:
            raise InvalidInputError(f"chunk_size: expected 3 ints with chunk_size[1] > 0, got {self.chunk_size}")
        for name in ("sample_rate", "n_mels", "frame_length_ms", "frame_shift_ms", "lfr_m", "lfr_n"):
            if int(getattr(self, name)) <= 0:
                raise InvalidInputError(
                    f"frontend_conf.{name}: expected a positive integer, got {getattr(self, name)!r}"
                )
        if self.window_size < self.window_shift:
            raise InvalidInputError("frontend_conf: frame_length must not be shorter than frame_shift")

    @property
    def window_size(self) -> int:
        return int(self.frame_length_ms * self.sample_rate / 1000)

    @property
    def window_shift(self) -> int:
        return int(self.frame_shift_ms * self.sample_rate / 1000)

    @property
    def piece_samples(self) -> int:
        return self.chunk_size[1] * SAMPLES_PER_CHUNK_UNIT

    @property
    def feature_dim(self) -> int:
        return self.n_mels * self.lfr_m

    @classmethod
    def from_frontend_conf(cls, conf: Mapping[str, Any], chunk_size=(0, 4, 5)) -> "Vq02FrontendConfig":
        """Parse a Paraformer `config.yaml` `frontend_conf` (fs, window, n_mels, frame_length/shift, lfr_m/n).

        `dither` / `cmvn_file` there are per-call choices here (see `extract_vq02_features`) and are ignored.
        """
        names = {"fs": "sample_rate", "window": "window", "n_mels": "n_mels", "frame_length": "frame_length_ms",
                 "frame_shift": "frame_shift_ms", "lfr_m": "lfr_m", "lfr_n": "lfr_n"}
        args = {names[k]: v for k, v in conf.items() if k in names}
        return cls(chunk_size=tuple(chunk_size), **args)

    @classmethod
    def full(cls) -> "Vq02FrontendConfig":
        """The real tokenizer's values (spec §3.2)."""
        return cls()

    @classmethod
    def tiny(cls) -> "Vq02FrontendConfig":
        """Same as `full()`: the front end has no learned size (the encoder's 560 inputs fix it)."""
        return cls()


@dataclass(slots=True)
class Vq02FrontendState:
    """What one utterance carries between pieces: unframed samples and held-back fbank frames."""

    sample_cache: torch.Tensor | None = None  # [S] float samples (unscaled)
    splice_cache: torch.Tensor | None = None  # [K, n_mels] fbank frames not yet stacked


def extract_vq02_features(
    wav16k: torch.Tensor,
    cmvn: Cmvn | None,
    *,
    dither: float = 1.0,
    generator: torch.Generator | None = None,
    config: Vq02FrontendConfig | None = None,
    precision: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, list[int]]:
    """Encoder input for a whole utterance: `wav16k [N]` / `[1, N]` -> `(feats [1, N_lfr, 560] float32, chunk_lengths)`.

    `chunk_lengths[i]` = stacked frames emitted by the i-th piece that emitted any (the
    encoder is called once per such piece); `sum(chunk_lengths) == N_lfr`.
    `dither` defaults to upstream's 1.0 (draws from `generator`, or the global RNG);
    use 0.0 for deterministic codes. `cmvn=None` skips normalisation. `precision` is the
    dtype of the fbank/LFR/CMVN arithmetic (float64 default, see `mel.py`; float32 is
    upstream's).
    """
    cfg = config or Vq02FrontendConfig()
    x = _mono(wav16k)
    piece = cfg.piece_samples
    num_pieces = x.shape[0] // piece + 1  # the last piece is the remainder (maybe empty)
    state = Vq02FrontendState()
    chunks: list[torch.Tensor] = []
    for i in range(num_pieces):
        is_final = i == num_pieces - 1
        samples = x[i * piece : (i + 1) * piece]
        if is_final and samples.shape[0] == 0:
            break
        feats, state = extract_vq02_piece(
            samples, state, cmvn, is_final=is_final, dither=dither, generator=generator, config=cfg,
            precision=precision,
        )
        if feats.shape[0] > 0:
            chunks.append(feats)
    if not chunks:
        return x.new_zeros((1, 0, cfg.feature_dim), dtype=torch.float32), []
    return torch.cat(chunks, dim=0)[None], [int(c.shape[0]) for c in chunks]


def extract_vq02_piece(
    samples: torch.Tensor,
    state: Vq02FrontendState,
    cmvn: Cmvn | None,
    *,
    is_final: bool,
    dither: float = 1.0,
    generator: torch.Generator | None = None,
    config: Vq02FrontendConfig | None = None,
    precision: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, Vq02FrontendState]:
    """One streaming step: `samples [S]` -> `(feats [T_i, 560] float32 (T_i may be 0), new state)`.

    The input state is not modified. Mirrors `WavFrontendOnline.forward` per piece.
    """
    cfg = config or Vq02FrontendConfig()
    if precision not in (torch.float32, torch.float64):
        raise InvalidInputError(f"precision: expected torch.float32 or torch.float64, got {precision}")
    samples = _mono(samples)
    carried = state.sample_cache
    x = samples if carried is None else torch.cat([carried.to(samples), samples])  # x: [L]
    num_frames = fbank_num_frames(x.shape[0], cfg.window_size, cfg.window_shift)
    new_state = Vq02FrontendState(
        sample_cache=x[num_frames * cfg.window_shift :],
        splice_cache=state.splice_cache,
    )
    context = (cfg.lfr_m - 1) // 2
    if num_frames == 0:
        stacked = _final_flush(state.splice_cache, cfg, context) if is_final else None
        return _normalised(stacked, cmvn, cfg, x), new_state

    # x * 32768 is exact in float32 (a power of two), so scaling before the cast loses nothing.
    fbank = kaldi_fbank(
        (x * INT16_SCALE).to(precision), cfg.sample_rate, num_mel_bins=cfg.n_mels,
        frame_length_ms=cfg.frame_length_ms, frame_shift_ms=cfg.frame_shift_ms, dither=dither,
        window_type=cfg.window, energy_floor=0.0, generator=generator,
    )  # fbank: [F, n_mels]
    splice = state.splice_cache
    if splice is None:  # utterance start: left context = copies of the first frame
        splice = fbank[:1].repeat(context, 1)
    splice = splice.to(fbank)
    if fbank.shape[0] + splice.shape[0] < cfg.lfr_m:
        # Not enough frames for one stacked frame: keep them all. Upstream emits nothing here
        # even on the final piece.
        new_state.splice_cache = torch.cat([splice, fbank])
        return _normalised(None, cmvn, cfg, x), new_state
    stacked, new_state.splice_cache = stack_lfr(torch.cat([splice, fbank]), cfg.lfr_m, cfg.lfr_n, is_final)
    return _normalised(stacked, cmvn, cfg, x), new_state


def stack_lfr(frames: torch.Tensor, lfr_m: int, lfr_n: int, is_final: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Streaming LFR of `frames [T, D]` (left context already in front) -> `(stacked [T_out, m*D], held back [K, D])`.

    Candidates: `ceil((T - (m-1)//2) / n)` windows starting at 0, n, 2n, ...; a window that
    runs past T is emitted only when `is_final` (padded by repeating the last frame),
    otherwise it and everything after stops. Frames from `min(T-1, n * emitted)` on are
    held back for the next piece.
    """
    t = frames.shape[0]
    candidates = max(math.ceil((t - (lfr_m - 1) // 2) / lfr_n), 0)
    complete = min(candidates, max((t - lfr_m) // lfr_n + 1, 0))  # windows with all m frames present
    emitted = candidates if is_final else complete
    if emitted > 0:
        needed = (emitted - 1) * lfr_n + lfr_m
        if needed > t:
            frames_padded = torch.cat([frames, frames[-1:].expand(needed - t, -1)])
        else:
            frames_padded = frames[:needed]
        windows = frames_padded.unfold(0, lfr_m, lfr_n)  # windows: [emitted, D, m]
        stacked = windows.transpose(1, 2).reshape(emitted, -1)  # frame-major: [f0 | f1 | ... | f(m-1)]
    else:
        stacked = frames.new_zeros((0, frames.shape[1] * lfr_m))
    return stacked, frames[min(t - 1, emitted * lfr_n) :]


def _final_flush(splice: torch.Tensor | None, cfg: Vq02FrontendConfig, context: int) -> torch.Tensor | None:
    """Final piece with no new fbank frame: upstream stacks what the splice cache still holds."""
    if splice is None or splice.shape[0] <= context:
        return None  # upstream's stacking finds nothing to stack, fails, and skips this (< 480-sample) piece
    stacked, _ = stack_lfr(splice, cfg.lfr_m, cfg.lfr_n, is_final=True)
    return stacked


def _normalised(stacked, cmvn, cfg, like) -> torch.Tensor:
    if stacked is None:
        return like.new_zeros((0, cfg.feature_dim), dtype=torch.float32)
    if cmvn is not None:
        stacked = cmvn.apply(stacked)
    return stacked.float()


def _mono(wav: torch.Tensor) -> torch.Tensor:
    if not isinstance(wav, torch.Tensor) or not wav.is_floating_point():
        raise InvalidInputError(f"wav16k: expected a floating-point tensor, got {getattr(wav, 'dtype', type(wav))}")
    if wav.dim() == 2 and wav.shape[0] == 1:
        wav = wav[0]
    if wav.dim() != 1:
        raise InvalidInputError(f"wav16k: expected [N] or [1, N] (mono 16 kHz), got shape {tuple(wav.shape)}")
    if wav.dtype in (torch.float16, torch.bfloat16):
        wav = wav.float()
    return wav
