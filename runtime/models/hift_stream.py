"""Streaming HiFT: the vocoder half of upstream `CosyVoice_stream_impl_._token2wav_stream` (spec §6).

Per chunk of new mel frames:
1. prepend the previous call's last `mel_cache_len` (8) mel frames;
2. run HiFT with the previous call's last `8·480 = 3840` source samples overwriting the
   first 3840 samples of the new source (keeps the excitation phase continuous);
3. cross-fade the first 3840 output samples with the previous call's last 3840 samples
   using `np.hamming(7680)` (float64, cast to fp32 once): new·w[:3840] + old·w[3840:];
4. remember the last 8 mel frames, 3840 source samples and 3840 (cross-faded) speech
   samples, and — unless this is the last chunk — withhold the last 3840 samples, which
   the next call re-synthesises from the cached mel frames and fades in.

All per-stream state lives in `HiFTStreamState`; the model stays stateless.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from ..errors import InvalidInputError

if TYPE_CHECKING:  # pragma: no cover
    from .hift import HiFTGenerator


@dataclass(frozen=True, slots=True)
class HiFTStreamState:
    """Vocoder cache of one stream (upstream's `hift_cache_dict[session]`).

    mel:    [B, C_mel, ≤ mel_cache_len]   last mel frames of the previous call (None before the first)
    source: [B, 1, ≤ mel_cache_len·S]     last NSF source samples of the previous call, float32
    speech: [B, ≤ mel_cache_len·S]        last (cross-faded) output samples of the previous call, float32
    finished: True after the call with `last=True`; the stream then accepts no more chunks.
    """

    mel_cache_len: int = 8
    mel: Optional[torch.Tensor] = None
    source: Optional[torch.Tensor] = None
    speech: Optional[torch.Tensor] = None
    finished: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.mel_cache_len, int) or self.mel_cache_len < 1:
            raise InvalidInputError(f"mel_cache_len: expected a positive int, got {self.mel_cache_len!r}")

    @property
    def started(self) -> bool:
        return self.mel is not None


@lru_cache(maxsize=8)
def _hamming_cpu(n: int) -> torch.Tensor:
    return torch.from_numpy(np.hamming(n)).to(torch.float32)


def hamming_fade_window(overlap: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """`np.hamming(2·overlap)` computed in float64, cast to float32 (upstream's `speech_window`)."""
    return _hamming_cpu(2 * overlap).to(device)


def vocode_chunk(
    hift: "HiFTGenerator",
    mel_chunk: torch.Tensor,
    state: Optional[HiFTStreamState] = None,
    last: bool = False,
    draws: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    generator: Optional[torch.Generator] = None,
    return_source: bool = False,
):
    """Vocode one streamed chunk of mel frames.

    mel_chunk [B, 80, T_new] (T_new ≥ 0, at least one frame overall); state from the
    previous call (None or a fresh `HiFTStreamState()` to start a stream); last=True on
    the final chunk. draws = (rand_ini [B, H+1], sine_noise [B, 480·(T_cache+T_new), H+1])
    for this call's HiFT run, T_cache = frames held in `state.mel`; or None to draw from
    `generator`. Returns (audio [B, n] float32, new_state), plus the HiFT source
    [B, 1, 480·(T_cache+T_new)] (after the cached-source overwrite) with `return_source`.
    n = 480·(T_cache+T_new) − 3840 for non-final chunks (the tail is withheld), all of
    it for the last chunk.
    """
    state = HiFTStreamState() if state is None else state
    if not isinstance(state, HiFTStreamState):
        raise InvalidInputError(f"state: expected a HiFTStreamState or None, got {type(state).__name__}")
    if state.finished:
        raise InvalidInputError("state: this stream already received its last chunk; start a new HiFTStreamState")
    mel = _join_mel(hift, state, mel_chunk)
    overlap = state.mel_cache_len * hift.config.upsample_scale  # samples: 3840 upstream
    if not last and not state.started and mel.shape[2] < state.mel_cache_len:
        # Upstream would cross-fade the next chunk against fewer than `overlap` samples and fail.
        raise InvalidInputError(f"mel_chunk: the first non-final chunk needs >= {state.mel_cache_len} frames "
                                f"(the cross-fade overlap), got {mel.shape[2]}")

    speech, source = hift.inference(mel, draws=draws, cache_source=state.source, generator=generator)
    if state.speech is not None and state.speech.shape[-1] > 0:
        speech = _cross_fade(speech, state.speech, hamming_fade_window(overlap, speech.device))

    new_state = replace(
        state,
        mel=mel[:, :, -state.mel_cache_len:].clone(),
        source=source[:, :, -overlap:].clone(),
        speech=speech[:, -overlap:].clone(),
        finished=bool(last),
    )
    audio = speech if last else speech[:, : max(speech.shape[1] - overlap, 0)]
    return (audio, new_state, source) if return_source else (audio, new_state)


def _join_mel(hift: "HiFTGenerator", state: HiFTStreamState, mel_chunk: torch.Tensor) -> torch.Tensor:
    """[cached mel frames] ++ mel_chunk along time, after checking the chunk's shape."""
    c_mel = hift.config.in_channels
    if (not isinstance(mel_chunk, torch.Tensor) or mel_chunk.dim() != 3 or mel_chunk.shape[1] != c_mel
            or not torch.is_floating_point(mel_chunk)):
        got = f"{mel_chunk.dtype} tensor {list(mel_chunk.shape)}" if isinstance(mel_chunk, torch.Tensor) \
            else type(mel_chunk).__name__
        raise InvalidInputError(f"mel_chunk: expected a float tensor [B, {c_mel}, T], got {got}")
    if state.mel is None:
        mel = mel_chunk
    else:
        if mel_chunk.shape[0] != state.mel.shape[0]:
            raise InvalidInputError(f"mel_chunk: batch {mel_chunk.shape[0]} differs from the stream's "
                                    f"batch {state.mel.shape[0]}")
        mel = torch.cat([state.mel.to(mel_chunk), mel_chunk], dim=2)
    if mel.shape[2] < 1:
        raise InvalidInputError("mel_chunk: the stream has no mel frames yet (got an empty first chunk)")
    return mel


def _cross_fade(speech: torch.Tensor, previous: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Upstream `fade_in_out`: speech[:, :h] = speech[:, :h]·w[:h] + previous[:, -h:]·w[h:], h = len(w)/2."""
    h = window.shape[0] // 2
    out = speech.clone()
    out[:, :h] = speech[:, :h] * window[:h] + previous[:, -h:] * window[h:]
    return out
