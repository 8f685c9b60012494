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
`vocode_chunk_batch` runs the calls of several streams together (one HiFT pass per shape).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import torch

from ..errors import InvalidInputError
from .hift_source import check_draws

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
    state, mel = _prepare(hift, mel_chunk, state, last)
    speech, source = hift.inference(mel, draws=draws, cache_source=state.source, generator=generator)
    audio, new_state = _finish(hift, state, mel, speech, source, last)
    return (audio, new_state, source) if return_source else (audio, new_state)


def vocode_chunk_batch(
    hift: "HiFTGenerator",
    mel_chunks: Sequence[torch.Tensor],
    states: Sequence[Optional[HiFTStreamState]],
    last: Sequence[bool],
    draws: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> list[tuple[torch.Tensor, HiFTStreamState, torch.Tensor]]:
    """`vocode_chunk` of several independent streams, batched where the shapes allow.

    Entry b: mel_chunks[b] `[1, 80, T_b]`, states[b], last[b] and its NSF draws[b] =
    (rand_ini `[1, H+1]`, sine_noise `[1, 480·(T_cache+T_b), H+1]`), as `vocode_chunk` takes
    them (the draws are explicit so each stream keeps its own random sequence). HiFT is
    convolutional (and its f0 conv and STFT look both ways), so zero padding would change a
    shorter item's last samples: entries run as one batch per equal shape (joined mel length,
    cached source and speech lengths) instead; at steady state all streams share one shape.
    Returns, per entry, (audio `[1, n_b]`, new state, source `[1, 1, 480·(T_cache+T_b)]`), equal
    to `vocode_chunk(..., return_source=True)` up to floating-point reduction order.
    """
    if not (len(mel_chunks) == len(states) == len(last) == len(draws)):
        raise InvalidInputError(f"mel_chunks/states/last/draws: expected one entry per stream, got "
                                f"{len(mel_chunks)}/{len(states)}/{len(last)}/{len(draws)}")
    for b, mel in enumerate(mel_chunks):
        if isinstance(mel, torch.Tensor) and mel.dim() == 3 and mel.shape[0] != 1:
            raise InvalidInputError(f"mel_chunks[{b}]: one stream per entry (batch 1), got batch {mel.shape[0]}")
    prepared = [_prepare(hift, mel, state, end, f"[{b}]")
                for b, (mel, state, end) in enumerate(zip(mel_chunks, states, last))]
    channels, scale = hift.config.n_harmonic_channels, hift.config.upsample_scale
    for b, (_, mel) in enumerate(prepared):
        try:
            check_draws(draws[b], 1, mel.shape[2] * scale, channels)
        except InvalidInputError as exc:
            raise InvalidInputError(f"draws[{b}]: {exc}") from exc
    groups: dict[tuple[int, int, int], list[int]] = {}
    for b, (state, mel) in enumerate(prepared):
        key = (mel.shape[2], _frames(state.source), _frames(state.speech))
        groups.setdefault(key, []).append(b)
    out: list = [None] * len(prepared)
    for members in groups.values():
        group_states = [prepared[b][0] for b in members]
        mel = torch.cat([prepared[b][1] for b in members])  # [G, 80, T]
        where = draws[members[0]][0].device  # concatenated where they are, moved to the model once
        rand_ini = torch.cat([draws[b][0].to(where) for b in members])
        sine_noise = torch.cat([draws[b][1].to(where) for b in members])
        cached = None if group_states[0].source is None else torch.cat([s.source for s in group_states])
        speech, source = hift.inference(mel, draws=(rand_ini, sine_noise), cache_source=cached)
        for g, b in enumerate(members):
            state = prepared[b][0]
            audio, new_state = _finish(hift, state, mel[g:g + 1], speech[g:g + 1], source[g:g + 1], last[b])
            out[b] = (audio, new_state, source[g:g + 1])
    return out


def _frames(x: Optional[torch.Tensor]) -> int:
    return -1 if x is None else int(x.shape[-1])


def _prepare(hift: "HiFTGenerator", mel_chunk: torch.Tensor, state: Optional[HiFTStreamState], last: bool,
             what: str = "") -> tuple[HiFTStreamState, torch.Tensor]:
    """Check one call's inputs → (state, mel `[B, 80, T_cache + T_new]` with the cached frames in front)."""
    state = HiFTStreamState() if state is None else state
    if not isinstance(state, HiFTStreamState):
        raise InvalidInputError(f"state{what}: expected a HiFTStreamState or None, got {type(state).__name__}")
    if state.finished:
        raise InvalidInputError(f"state{what}: this stream already received its last chunk; "
                                "start a new HiFTStreamState")
    mel = _join_mel(hift, state, mel_chunk, what)
    if not last and not state.started and mel.shape[2] < state.mel_cache_len:
        # Upstream would cross-fade the next chunk against fewer than `overlap` samples and fail.
        raise InvalidInputError(f"mel_chunk{what}: the first non-final chunk needs >= {state.mel_cache_len} "
                                f"frames (the cross-fade overlap), got {mel.shape[2]}")
    return state, mel


def _finish(hift: "HiFTGenerator", state: HiFTStreamState, mel: torch.Tensor, speech: torch.Tensor,
            source: torch.Tensor, last: bool) -> tuple[torch.Tensor, HiFTStreamState]:
    """Cross-fade with the previous call, cache the tails, withhold the overlap unless last → (audio, state)."""
    overlap = state.mel_cache_len * hift.config.upsample_scale  # samples: 3840 upstream
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
    return audio, new_state


def _join_mel(hift: "HiFTGenerator", state: HiFTStreamState, mel_chunk: torch.Tensor, what: str = "") -> torch.Tensor:
    """[cached mel frames] ++ mel_chunk along time, after checking the chunk's shape."""
    c_mel = hift.config.in_channels
    if (not isinstance(mel_chunk, torch.Tensor) or mel_chunk.dim() != 3 or mel_chunk.shape[1] != c_mel
            or not torch.is_floating_point(mel_chunk)):
        got = f"{mel_chunk.dtype} tensor {list(mel_chunk.shape)}" if isinstance(mel_chunk, torch.Tensor) \
            else type(mel_chunk).__name__
        raise InvalidInputError(f"mel_chunk{what}: expected a float tensor [B, {c_mel}, T], got {got}")
    if state.mel is None:
        mel = mel_chunk
    else:
        if mel_chunk.shape[0] != state.mel.shape[0]:
            raise InvalidInputError(f"mel_chunk{what}: batch {mel_chunk.shape[0]} differs from the stream's "
                                    f"batch {state.mel.shape[0]}")
        mel = torch.cat([state.mel.to(mel_chunk), mel_chunk], dim=2)
    if mel.shape[2] < 1:
        raise InvalidInputError(f"mel_chunk{what}: the stream has no mel frames yet (got an empty first chunk)")
    return mel


def _cross_fade(speech: torch.Tensor, previous: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Upstream `fade_in_out`: speech[:, :h] = speech[:, :h]·w[:h] + previous[:, -h:]·w[h:], h = len(w)/2."""
    h = window.shape[0] // 2
    out = speech.clone()
    out[:, :h] = speech[:, :h] * window[:h] + previous[:, -h:] * window[h:]
    return out
