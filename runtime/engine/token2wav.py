"""token2wav: mixed audio ids -> 24 kHz waveform (flow matching + HiFT), offline and streamed.

Upstream's `CosyVoice_stream_impl_` (spec §5, §6) keeps per-session caches on the model
object; here every stream's state lives in its own `Token2WavStream`, and the models
(`FlowModel`, `HiFTGenerator`) stay shared and read-only.

Mixed ids are LLM ids − 65536: per 5-id group two vq02 codes (0..1023) then three
1024 + vq06 codes (spec §5.4).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from ..errors import InvalidInputError
from ..models.flow import FlowModel, reshape_mixed_tokens
from ..models.flow.streaming import FlowStreamState, inference_chunk, next_stream_action, setup_stream
from ..models.flow.tokens import mixed_len
from ..models.hift import HiFTGenerator, HiFTStreamState

# One NSF draw set per HiFT call: (call index, samples) -> (rand_ini, sine_noise) or None to sample.
DrawProvider = Callable[[int, int], Optional[tuple[torch.Tensor, torch.Tensor]]]


def bf16_round(x: torch.Tensor) -> torch.Tensor:
    """Round to bf16 precision and back to fp32 (upstream passes prompt mel / x-vector as bf16, spec §5)."""
    return x.detach().to(torch.bfloat16).to(torch.float32)


@dataclass(frozen=True)
class VoiceConditioning:
    """Decoder-side description of one voice (shared read-only by all its requests).

    prompt_mixed: [Np] int64 mixed ids of the prompt audio (vq0206 LLM ids − 65536).
    prompt_feat:  [1, T_mel, 80] float32 prompt log-mel, bf16-rounded.
    embedding:    [1, 192] float32 CAM++ x-vector, bf16-rounded.
    """

    prompt_mixed: torch.Tensor
    prompt_feat: torch.Tensor
    embedding: torch.Tensor

    @classmethod
    def from_features(cls, prompt_mixed, prompt_feat: torch.Tensor, embedding: torch.Tensor) -> "VoiceConditioning":
        """Build from raw front-end outputs, applying upstream's bf16 rounding."""
        mixed = torch.as_tensor(prompt_mixed, dtype=torch.long).reshape(-1)
        if mixed.numel() < 5:
            raise InvalidInputError("prompt audio yields fewer than 5 audio tokens (needs >= 0.12 s of speech)")
        return cls(mixed, bf16_round(prompt_feat), bf16_round(embedding))

    @property
    def prompt_pairs(self) -> torch.Tensor:
        """[1, Tp, 2] flow token pairs of the prompt."""
        return reshape_mixed_tokens(self.prompt_mixed)[None]


class Token2Wav:
    """The decoder stage: shared flow + HiFT models and the runtime's fixed start noise."""

    def __init__(self, flow: FlowModel, hift: HiFTGenerator, noise: torch.Tensor, n_timesteps: int = 10) -> None:
        # noise: [1, 80, N] fixed ODE start noise (upstream's rand_noise buffer, drawn once per process).
        self.flow, self.hift, self.noise, self.n_timesteps = flow, hift, noise, n_timesteps

    @property
    def device(self) -> torch.device:
        return self.flow.device

    def offline(self, mixed: torch.Tensor, voice: VoiceConditioning,
                generator: Optional[torch.Generator] = None,
                draws: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Non-streaming decode (upstream token2wav_nonstream).

        mixed: [N] int64 generated mixed ids. Returns (speech [N_out] float32, mel [1, 80, T_mel]).
        """
        mel = self.flow.inference_mixed(self._check_mixed(mixed), voice.prompt_mixed,
                                        voice.prompt_feat.to(self.device), voice.embedding.to(self.device),
                                        self.noise, self.n_timesteps)
        speech, _ = self.hift.inference(mel, draws=draws, generator=generator)
        return speech[0].float(), mel

    def stream(self, voice: VoiceConditioning, generator: Optional[torch.Generator] = None,
               draws: Optional[DrawProvider] = None, record: bool = False) -> "Token2WavStream":
        """A new per-request streaming decoder for `voice`."""
        return Token2WavStream(self, voice, generator, draws, record=record)

    def _check_mixed(self, mixed) -> torch.Tensor:
        ids = torch.as_tensor(mixed, dtype=torch.long).reshape(-1)
        if ids.numel() == 0:
            raise InvalidInputError("no audio tokens to decode (the LLM produced none)")
        return ids


@dataclass
class Token2WavStream:
    """Per-request streaming decoder (upstream token2wav_stream, spec §6).

    `push(ids, last)` appends mixed ids and returns the waveform chunks they complete:
    set-up after the first 5 ids (prompt caches, no audio), then chunks of 15, 24, then
    48 token frames (+3 lookahead frames), and everything left on `last`.
    """

    decoder: Token2Wav
    voice: VoiceConditioning
    generator: Optional[torch.Generator] = None
    draws: Optional[DrawProvider] = None
    buffer: list[int] = field(default_factory=list)
    flow_state: Optional[FlowStreamState] = None
    hift_state: Optional[HiFTStreamState] = None
    chunk_sizes: tuple[int, ...] = ()
    hift_calls: int = 0
    finished: bool = False
    # With `record`, every chunk's flow mel [1, 80, T] and NSF source [1, 1, n] are kept (tests, debugging).
    record: bool = False
    trace: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def __post_init__(self) -> None:
        cfg = self.decoder.flow.cfg
        self.chunk_sizes = tuple(cfg.chunk_sizes)
        self.hift_state = HiFTStreamState(mel_cache_len=cfg.mel_cache_len)

    def push(self, ids, last: bool = False) -> list[torch.Tensor]:
        """Append mixed ids; returns the finished waveform chunks ([n] float32 each, possibly none).

        Ids are taken one at a time with one planning decision each, exactly as upstream's
        one-id-per-call driver, so chunk boundaries do not depend on how ids are grouped into
        pushes. One deliberate difference: when the set-up lands on the very last id (a
        5-id output), upstream emits nothing; we flush those frames instead.
        """
        if self.finished:
            raise InvalidInputError("stream already finished (push after last=True)")
        new = torch.as_tensor(ids, dtype=torch.long).reshape(-1).tolist()
        out: list[torch.Tensor] = []
        for k, tok in enumerate(new):
            self.buffer.append(int(tok))
            out.extend(self._act(last=last and k == len(new) - 1))
        if last and not new and self.flow_state is not None and self.buffer:
            out.extend(self._act(last=True))
        self.finished = last
        return out

    def _act(self, last: bool) -> list[torch.Tensor]:
        lookahead = self.decoder.flow.cfg.encoder.pre_lookahead_len
        action = next_stream_action(len(self.buffer), self.flow_state is not None, self.chunk_sizes, last, lookahead)
        if action.kind == "wait":
            return []
        if action.kind == "setup":
            self._setup(action.take)
            return self._run(len(self.buffer), len(self.buffer), last=True) if last else []
        self.chunk_sizes = action.chunk_sizes
        return self._run(action.take, action.advance, last=action.kind == "flush")

    def _setup(self, take: int) -> None:
        d, v = self.decoder, self.voice
        look = reshape_mixed_tokens(torch.tensor(self.buffer[:take]))[None].to(d.device)
        self.flow_state = setup_stream(d.flow, v.prompt_pairs.to(d.device), look, v.prompt_feat.to(d.device),
                                       v.embedding.to(d.device), d.noise, n_timesteps=d.n_timesteps)

    def _run(self, take: int, advance: int, last: bool) -> list[torch.Tensor]:
        d = self.decoder
        pairs = reshape_mixed_tokens(torch.tensor(self.buffer[:take]))[None].to(d.device)
        mel, self.flow_state = inference_chunk(d.flow, pairs, self.flow_state, last, d.noise)
        del self.buffer[:advance]
        n_samples = (mel.shape[2] + (self.hift_state.mel.shape[2] if self.hift_state.started else 0)) \
            * d.hift.config.upsample_scale
        draws = self.draws(self.hift_calls, n_samples) if self.draws else None
        audio, self.hift_state, source = d.hift.vocode_chunk(mel, self.hift_state, last=last, draws=draws,
                                                             generator=self.generator, return_source=True)
        if self.record:
            self.trace.append((mel, source))
        self.hift_calls += 1
        return [audio[0].float()]


def mixed_ids_for_frames(frames: int) -> int:
    """Mixed ids covering `frames` token frames ((frames // 3) * 5, as upstream rounds)."""
    return mixed_len(frames)


def to_numpy(audio: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(audio.detach().float().cpu().numpy().reshape(-1), dtype=np.float32)
