"""Prompt audio -> everything the LLM and the decoder need about that voice (spec §2.1, §3).

One `VoicePrompt` per prompt recording: the vq02/vq06 codes and their interleaved LLM
ids / `<audio_N>` string, the decoder conditioning (bf16-rounded prompt mel and CAM++
x-vector), and stage timings. It is immutable, so a voice cache can share it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..errors import InvalidInputError
from ..frontend.prompt_audio import preprocess_prompt
from ..frontend.vq02_features import extract_vq02_features
from ..loading.components import Components
from ..models.interleave import audio_token_str, interleave_vq0206, llm_ids_to_mixed
from ..models.vq02 import kmeans_codes
from .token2wav import VoiceConditioning

MIN_PROMPT_GROUPS = 1  # at least one 2+3 group (0.12 s) of speech after trimming
SILENCE_PEAK = 1e-4    # -80 dBFS: below this the recording holds no usable speech


@dataclass(frozen=True)
class VoicePrompt:
    """Front-end outputs of one prompt recording.

    vq02 / vq06: raw codes (0..1023 / 0..4095). llm_audio_ids: the 2:3 interleave as LLM ids
    (65536 + code, 66560 + vq06 code). token_str: the same as `<audio_K>` text for the prompt.
    conditioning: decoder prompt (mixed ids, bf16-rounded prompt mel and x-vector).
    """

    vq02: list[int]
    vq06: list[int]
    llm_audio_ids: list[int]
    token_str: str
    conditioning: VoiceConditioning
    timings: dict = field(default_factory=dict, compare=False)


def encode_voice(comps: Components, wav: torch.Tensor, sample_rate: int, *, dither: float,
                 generator: Optional[torch.Generator] = None, resampler: str = "sinc") -> VoicePrompt:
    """wav [C, N] float32 at `sample_rate` (>= 16 kHz) -> VoicePrompt.

    `dither` and `generator` drive the vq02 fbank dither (upstream: 1.0, unseeded);
    `resampler` is "sinc" (upstream-exact) or "soxr".
    """
    t0 = time.perf_counter()
    peak = float(wav.abs().max()) if wav.numel() else 0.0
    if peak < SILENCE_PEAK:
        raise InvalidInputError(f"prompt audio is silent (peak {peak:.2g}); it must contain speech")
    prompt = preprocess_prompt(wav, sample_rate, comps.mel, resampler=resampler)
    t1 = time.perf_counter()
    vq02 = _vq02_codes(comps, prompt.wav16_trimmed, dither, generator)
    t2 = time.perf_counter()
    vq06 = comps.vq06(prompt.wav16_trimmed)
    t3 = time.perf_counter()
    xvector = comps.speaker(prompt.campplus_fbank.float())
    t4 = time.perf_counter()
    llm_ids = interleave_vq0206(vq02, vq06)
    if len(llm_ids) < 5 * MIN_PROMPT_GROUPS:
        raise InvalidInputError(
            f"prompt audio: only {prompt.wav16_trimmed.shape[-1] / 16000:.2f} s of speech after silence "
            "trimming; need at least a fraction of a second of speech"
        )
    cond = VoiceConditioning.from_features(llm_ids_to_mixed(llm_ids), prompt.speech_feat.float(), xvector)
    timings = {"preprocess_s": t1 - t0, "vq02_s": t2 - t1, "vq06_s": t3 - t2, "speaker_s": t4 - t3}
    return VoicePrompt(vq02, vq06, llm_ids, audio_token_str(vq02, vq06), cond, timings)


def _vq02_codes(comps: Components, wav16: torch.Tensor, dither: float,
                generator: Optional[torch.Generator]) -> list[int]:
    feats, chunk_lengths = extract_vq02_features(wav16, comps.cmvn, dither=dither, generator=generator,
                                                 config=comps.vq02_frontend)
    if not chunk_lengths:
        return []
    device = comps.centroids.device
    dtype = next(comps.vq02.parameters()).dtype
    with torch.inference_mode():
        enc = comps.vq02.encode(feats.to(device=device, dtype=dtype), chunk_lengths)
        codes, _ = kmeans_codes(enc.float(), comps.centroids.float())
    return codes[0].tolist()
