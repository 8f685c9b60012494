"""Prompt audio -> everything the LLM and the decoder need about that voice (spec §2.1, §3).

One `VoicePrompt` per prompt recording: the vq02/vq06 codes and their interleaved LLM
ids / `<audio_N>` string, the decoder conditioning (bf16-rounded prompt mel and CAM++
x-vector), and stage timings. It is immutable, so a voice cache can share it.
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Optional

import torch

from ..errors import InvalidInputError
from ..frontend.prompt_audio import TokenizerSignal, campplus_fbank, prompt_speech_feat, tokenizer_signal
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
                 generator: Optional[torch.Generator] = None, resampler: str = "sinc",
                 parallel: bool = True) -> VoicePrompt:
    """wav [C, N] float32 at `sample_rate` (>= 16 kHz) -> VoicePrompt.

    `dither` and `generator` drive the vq02 fbank dither (upstream: 1.0, unseeded);
    `resampler` is "sinc" (upstream-exact) or "soxr". Three chains share nothing but the
    tokenizer signal: vq02 (fbank, the encoder, k-means), vq06 (whisper mel, its ONNX graph) and
    the decoder conditioning (24 kHz mel, CAM++ fbank and graph). With `parallel` (default) the
    last two run on the front-end pool while this thread runs vq02, so a cold voice waits for
    the slowest chain instead of their sum; the results are the same either way (vq02's dither
    generator is only touched here, the ONNX sessions are deterministic).
    """
    t0 = time.perf_counter()
    peak = float(wav.abs().max()) if wav.numel() else 0.0
    if peak < SILENCE_PEAK:
        raise InvalidInputError(f"prompt audio is silent (peak {peak:.2g}); it must contain speech")
    signal = tokenizer_signal(wav, sample_rate, resampler)
    timings = {"preprocess_s": time.perf_counter() - t0}
    chains = {
        "conditioning": partial(_conditioning, comps, signal, sample_rate, resampler),
        "vq06": partial(comps.vq06, signal.wav16_trimmed),
        "vq02": partial(_vq02_codes, comps, signal.wav16_trimmed, dither, generator),
    }
    results = _run_chains(chains, timings, parallel)
    (speech_feat, xvector), vq06_codes, vq02 = results["conditioning"], results["vq06"], results["vq02"]
    llm_ids = interleave_vq0206(vq02, vq06_codes)
    if len(llm_ids) < 5 * MIN_PROMPT_GROUPS:
        raise InvalidInputError(
            f"prompt audio: only {signal.wav16_trimmed.shape[-1] / 16000:.2f} s of speech after silence "
            "trimming; need at least a fraction of a second of speech"
        )
    cond = VoiceConditioning.from_features(llm_ids_to_mixed(llm_ids), speech_feat.float(), xvector)
    timings["total_s"] = time.perf_counter() - t0
    return VoicePrompt(vq02, vq06_codes, llm_ids, audio_token_str(vq02, vq06_codes), cond, timings)


def _run_chains(chains: dict[str, Callable[[], Any]], timings: dict, parallel: bool) -> dict[str, Any]:
    """Run the named chains (the last on this thread, the others on the pool when `parallel`); each
    one's wall time lands in timings["<name>_s"]. A chain's error is raised here."""
    def timed(name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        result = fn()
        timings[f"{name}_s"] = time.perf_counter() - start
        return result

    *others, (last, last_fn) = chains.items()
    if not parallel:
        return {name: timed(name, fn) for name, fn in chains.items()}
    pending = {name: _frontend_pool().submit(timed, name, fn) for name, fn in others}
    try:
        results = {last: timed(last, last_fn)}
        return {**{name: future.result() for name, future in pending.items()}, **results}
    finally:
        for future in pending.values():
            future.cancel()  # after an error on this thread: drop what has not started


def _conditioning(comps: Components, signal: TokenizerSignal, sample_rate: int, resampler: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoder's conditioning: prompt mel [1, T, 80] (24 kHz) and the CAM++ x-vector [1, 192]."""
    speech_feat = prompt_speech_feat(signal.wav, sample_rate, comps.mel, resampler=resampler)
    xvector = comps.speaker(campplus_fbank(signal.wav, sample_rate, resampler=resampler).float())
    return speech_feat, xvector


_POOL: Optional[ThreadPoolExecutor] = None
_POOL_LOCK = threading.Lock()


def _frontend_pool() -> ThreadPoolExecutor:
    """The process's front-end worker threads (created on first use). Two chains per cold voice; with
    many cold voices at once they queue here instead of oversubscribing the CPU."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            workers = max(2, min(8, (os.cpu_count() or 2) // 2))
            _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="editx-frontend")
        return _POOL


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
