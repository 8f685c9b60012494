"""The public Runtime: clone a voice or edit speech by instruction, streamed or whole.

    rt = editx.Runtime.from_pretrained("dummy:tiny")           # or an upstream install path
    for chunk in rt.stream_clone("prompt.wav", "prompt transcript", "Text to speak."):
        play(chunk.samples)                                     # float32 PCM at 24 kHz
    audio = rt.clone("prompt.wav", "prompt transcript", "Text.")   # the collected stream
    edits = rt.edit("in.wav", "its transcript", "emotion", "happy", n_iter=2)

Streaming is the default path: requests run through one continuous-batching engine
(`engine/engine.py`), so concurrent calls from threads or asyncio share the GPU. With
`stream=False` (per call or in the config) a call runs upstream's whole-utterance path
(`OfflineRunner`), whose audio matches upstream's offline decoder. The Runtime holds only
shared read-only models, the config, the fixed ODE start noise and caches; every call
builds its own request state.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import AsyncIterator, Optional, Union

import numpy as np
import torch

from .config import RuntimeConfig, parse_device
from .engine.generate import audio_logit_bias
from .engine.jobs import ChunkStream, Job, OfflineRunner, StreamRunner, collect
from .engine.pieces import PieceStream, achain_pieces
from .engine.sampling import SamplingParams
from .engine.scheduler import SchedulerConfig
from .engine.token2wav import Token2Wav, decoder_slots
from .engine.voice import VoicePrompt, encode_voice
from .engine.voice_cache import VoiceCache, audio_key
from .errors import InvalidInputError
from .export.backends import apply_backends
from .frontend.audio_io import audio_from_array, load_audio
from .frontend.text_split import split_text
from .loading.components import Components, check_vocab, load_components
from .models.text import EDIT_TYPES, build_edit_instruction, clone_speaker_id, encode_clone_prompt, \
    encode_edit_prompt
from .types import Audio, AudioChunk

log = logging.getLogger("editx")

AudioInput = Union[str, Path, bytes, Audio, tuple]
NOISE_FRAMES = 30000          # upstream rand_noise: 600 s at 50 mel frames/s
MAX_TEXT_CHARS = 4000         # far beyond one utterance; bounds tokenizer work on hostile input
MAX_SPLIT_TEXT_CHARS = 100_000  # a split request: ~2 hours of speech
SPLIT_PIECE_CHARS = 300       # ~20 s of English speech (~1 min of Chinese): well inside one request's budget
MIN_NEW_TOKEN_ROOM = 64       # ~1.5 s of audio: a prompt must leave at least this much to generate
KV_BLOCK_SIZE = 16


class Runtime:
    """Step-Audio-EditX inference (see module doc). Build with `Runtime.from_pretrained`."""

    def __init__(self, components: Components, config: RuntimeConfig) -> None:
        check_vocab(components.llm.config)
        components = apply_backends(components, config)  # stages on onnxruntime / TensorRT (logged once)
        if config.stream_chunk_frames is not None:  # a copy: the loaded config object stays as read
            components.flow.cfg = dataclasses.replace(components.flow.cfg, chunk_sizes=config.stream_chunk_frames)
        self.components = components
        self.config = config
        gen = torch.Generator().manual_seed(config.noise_seed)
        # One fixed start-noise buffer per runtime, as upstream draws one per process (spec §5.6).
        noise = torch.randn(1, components.flow.cfg.output_size, NOISE_FRAMES, generator=gen)
        self.decoder = Token2Wav(components.flow, components.hift, noise.to(config.device), config.n_timesteps)
        self.decoder.slots = decoder_slots(components.flow, config)
        self.voice_cache = VoiceCache(config.voice_cache_bytes)
        llm = components.llm
        bias = audio_logit_bias(llm.config.vocab_size, llm.config.eos_token_id, config.device) \
            if config.audio_only_logits else None
        self._offline = OfflineRunner(llm, self.decoder, bias, config.cuda_graphs, config.max_length, self._report)
        self._streamer = StreamRunner(llm, self.decoder, bias, scheduler_config(components, config),
                                      batch_decoder=config.batch_decoder,
                                      overlap_decoder=config.overlap_decoder)

    # -- construction ------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model: str | Path, *, device: str = "cpu", dtype: Optional[str] = None,
                        decoder_dtype: Optional[str] = None, seed: int = 0, **overrides) -> "Runtime":
        """Load an upstream install folder, or a preset: "dummy:tiny" (seconds on CPU), "dummy:full"
        (real shapes, random weights, for GPU benchmarks).

        dtype: LLM dtype (default bfloat16 on CUDA as upstream, float32 on CPU);
        decoder_dtype: flow + HiFT (default float32 as upstream). Other RuntimeConfig fields
        (stream, n_timesteps, vq02_dither, audio_only_logits, max_num_seqs, ...) as keywords.
        """
        dev = parse_device(device)
        if dtype is None:
            dtype = "bfloat16" if dev.type == "cuda" else "float32"
        config = RuntimeConfig(device=dev, dtype=dtype, decoder_dtype=decoder_dtype or "float32", seed=seed,
                               **overrides)
        return cls(load_components(model, config), config)

    def default_sampling(self, greedy: bool = False, max_new_tokens: Optional[int] = None,
                         seed: Optional[int] = None) -> SamplingParams:
        """Upstream's sampling (temperature 0.7, top-k 50, repetition window 10) with this runtime's limits."""
        return SamplingParams(greedy=greedy, seed=seed,
                              max_new_tokens=max_new_tokens or self.components.default_max_new_tokens,
                              max_length=self.config.max_length)

    # -- clone ----------------------------------------------------------------------------
    def clone(self, prompt_audio: AudioInput, prompt_text: str, text: str, *, seed: Optional[int] = None,
              sampling: Optional[SamplingParams] = None, stream: Optional[bool] = None, split: bool = False) -> Audio:
        """Speak `text` in the voice of `prompt_audio` (whose transcript is `prompt_text`).

        prompt_audio: a file path, encoded bytes, an `Audio`, or `(samples, sample_rate)`; >= 16 kHz.
        Returns mono float32 Audio at 24 kHz (the collected stream, or upstream's offline
        decode with `stream=False`). split: speak long text (up to 100,000 characters) as consecutive
        requests of whole sentences, <= 300 characters each, piece k seeded seed + k (see `stream_clone`).
        """
        if split:
            pieces = self._pieces(text)
            if self.config.stream if stream is None else stream:
                audio = collect(self._piece_stream(prompt_audio, prompt_text, pieces, seed, sampling, 0), text)
                audio.info["pieces"] = len(pieces)
                return audio
            return _joined([self._run(self._clone_job(prompt_audio, prompt_text, piece, _seed_k(seed, k), sampling),
                                      False) for k, piece in enumerate(pieces)], text)
        return self._run(self._clone_job(prompt_audio, prompt_text, text, seed, sampling), stream)

    def stream_clone(self, prompt_audio: AudioInput, prompt_text: str, text: str, *, seed: Optional[int] = None,
                     sampling: Optional[SamplingParams] = None, priority: int = 0,
                     split: bool = False) -> Union[ChunkStream, PieceStream]:
        """Like `clone`, yielding `AudioChunk`s (float32 [n], 24 kHz, index, is_last) as they are made.

        Closing the returned iterator cancels the request and frees its KV blocks and caches.
        split: `text` (up to 100,000 characters) is cut into pieces of whole sentences of <= 300
        characters, spoken as consecutive requests in this voice (piece k seeded seed + k) and streamed
        as one: piece k+1 generates while piece k plays, so there is no gap. Without it a text over
        4,000 characters is refused, and one near that size would hit max_length (~3 minutes of speech).
        """
        if not split:
            return self._streamer.stream(self._clone_job(prompt_audio, prompt_text, text, seed, sampling), priority)
        return self._piece_stream(prompt_audio, prompt_text, self._pieces(text), seed, sampling, priority)

    async def astream_clone(self, prompt_audio: AudioInput, prompt_text: str, text: str, *,
                            seed: Optional[int] = None, sampling: Optional[SamplingParams] = None,
                            priority: int = 0, split: bool = False) -> AsyncIterator[AudioChunk]:
        """asyncio twin of `stream_clone` (the front end runs in a worker thread)."""
        pieces = self._pieces(text) if split else [text]
        first = await asyncio.to_thread(self._clone_job, prompt_audio, prompt_text, pieces[0], seed, sampling)

        def start(k: int) -> AsyncIterator[AudioChunk]:  # the voice is cached by piece 0: no front end here
            job = first if k == 0 else self._clone_job(prompt_audio, prompt_text, pieces[k], _seed_k(seed, k),
                                                       sampling)
            return self._streamer.astream(job, priority)

        source = achain_pieces(start, len(pieces)) if split else start(0)  # unsplit: the request's own chunks
        async with contextlib.aclosing(source) as chunks:  # closing us cancels it now
            async for chunk in chunks:
                yield chunk

    # -- edit -----------------------------------------------------------------------------
    def edit(self, audio: AudioInput, audio_text: str, edit_type: str, edit_info: Optional[str] = None,
             text: Optional[str] = None, n_iter: int = 1, *, seed: Optional[int] = None,
             sampling: Optional[SamplingParams] = None, stream: Optional[bool] = None) -> list[Audio]:
        """Edit `audio` (transcript `audio_text`): emotion / style / speed / paralinguistic / denoise / vad.

        Iteration k+1 edits the output of iteration k after a 16-bit 24 kHz WAV round trip, with
        the previous output's text as its transcript (upstream tts_infer.py, spec §2.4).
        Returns one Audio per iteration.
        """
        self._check_edit(edit_type, edit_info, audio_text, text, n_iter)
        results: list[Audio] = []
        current, current_text = audio, audio_text
        for k in range(n_iter):
            job = self._edit_job(current, current_text, edit_type, edit_info, text, _seed_k(seed, k), sampling)
            results.append(self._run(job, stream))
            current, current_text = results[-1].to_pcm16_roundtrip(), results[-1].text
        return results

    def stream_edit(self, audio: AudioInput, audio_text: str, edit_type: str, edit_info: Optional[str] = None,
                    text: Optional[str] = None, n_iter: int = 1, *, seed: Optional[int] = None,
                    sampling: Optional[SamplingParams] = None, priority: int = 0) -> ChunkStream:
        """Like `edit`, streaming the last iteration (earlier iterations run to completion first)."""
        job = self._last_edit_job(audio, audio_text, edit_type, edit_info, text, n_iter, seed, sampling)
        return self._streamer.stream(job, priority)

    async def astream_edit(self, audio: AudioInput, audio_text: str, edit_type: str, edit_info: Optional[str] = None,
                           text: Optional[str] = None, n_iter: int = 1, *, seed: Optional[int] = None,
                           sampling: Optional[SamplingParams] = None, priority: int = 0) -> AsyncIterator[AudioChunk]:
        """asyncio twin of `stream_edit`."""
        job = await asyncio.to_thread(self._last_edit_job, audio, audio_text, edit_type, edit_info, text, n_iter,
                                      seed, sampling)
        async with contextlib.aclosing(self._streamer.astream(job, priority)) as chunks:
            async for chunk in chunks:
                yield chunk

    # -- voices, stats, lifetime --------------------------------------------------------------
    def encode_voice(self, audio: AudioInput) -> VoicePrompt:
        """Front-end results (vq02 + vq06 codes, prompt mel, x-vector) of one recording, cached per voice.

        The vq02 dither noise is seeded from the audio's content hash and the runtime seed, so
        a voice always gets the same codes and the cache is exact.
        """
        wav, sr = self._load(audio, "audio")
        return self._voice(wav, sr)

    def forget_voice(self, audio: AudioInput) -> bool:
        """Drop the cached front-end results (codes, prompt mel, x-vector) of this recording; returns
        whether they were cached. KV blocks of earlier prompts stay in the prefix cache until the pool
        needs their space (they hold LLM activations, no audio)."""
        wav, sr = self._load(audio, "audio")
        return self.voice_cache.discard(self._voice_key(wav, sr))

    def engine_stats(self) -> dict:
        """Scheduler / engine counters (blocks, queue lengths, prefix hits, TTFA misses, underruns),
        and the DiT slot pool's (slots, free slots, CUDA graphs captured)."""
        slots = self.decoder.slots
        pool = {"decoder_slots": 0, "free_decoder_slots": 0, "decoder_slot_solves": 0, "decoder_graphs": 0,
                "decoder_graph_error": None}
        if slots is not None:
            pool = {"decoder_slots": slots.streams, "free_decoder_slots": slots.free_slots,
                    "decoder_slot_solves": slots.solves, "decoder_graphs": len(slots.captured),
                    "decoder_graph_error": slots.graph_error}
        return {**self._streamer.engine.stats(), **pool}

    def describe(self) -> dict:
        """What this runtime runs, as JSON-able values: model, device, the LLM path (dtype, attention
        kernel, decode CUDA graphs and their buckets), KV pool, decoder path (DiT slot pool, backends),
        front-end ONNX providers and threads, kernel choices (see `editx.describe`)."""
        from .describe import describe

        return describe(self)

    def warmup(self) -> None:
        """Capture the streaming path's CUDA graphs now instead of on first use, where a capture adds
        to that request's latency: the LLM decode step of every batch bucket and the DiT slot pool's
        chunk buckets + single-stream set-up buckets. Call it before traffic. Without graphs (CPU) it
        runs each bucket's static buffers once, or nothing."""
        start = time.perf_counter()
        llm = self._streamer.engine.warmup()
        slots = self.decoder.slots
        decoder = 0 if slots is None else slots.warmup(self._report)
        self._report(f"warm-up: {llm} LLM decode buckets, {decoder} decoder buckets in "
                     f"{time.perf_counter() - start:.1f} s")

    def close(self) -> None:
        """Stop the streaming engine (cancels running streams)."""
        self._streamer.shutdown()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- request preparation ----------------------------------------------------------------
    def _clone_job(self, prompt_audio, prompt_text, text, seed, sampling) -> Job:
        _check_text(prompt_text, "prompt_text")
        _check_text(text, "text")
        params = self._params(seed, sampling)
        wav, sr = self._load(prompt_audio, "prompt_audio")
        voice = self._voice(wav, sr)
        speaker = clone_speaker_id(prompt_text, wav)
        ids = encode_clone_prompt(self.components.text, text, prompt_text, speaker, voice.token_str)
        return self._job(ids, voice, params, text)

    def _edit_job(self, audio, audio_text, edit_type, edit_info, text, seed, sampling) -> Job:
        instruction = build_edit_instruction(edit_type, edit_info, audio_text, text)
        params = self._params(seed, sampling)
        voice = self.encode_voice(audio)
        ids = encode_edit_prompt(self.components.text, instruction, voice.token_str)
        return self._job(ids, voice, params, text if edit_type == "paralinguistic" else audio_text)

    def _last_edit_job(self, audio, audio_text, edit_type, edit_info, text, n_iter, seed, sampling) -> Job:
        self._check_edit(edit_type, edit_info, audio_text, text, n_iter)
        current, current_text = audio, audio_text
        if n_iter > 1:
            earlier = self.edit(audio, audio_text, edit_type, edit_info, text, n_iter - 1, seed=seed,
                                sampling=sampling)
            current, current_text = earlier[-1].to_pcm16_roundtrip(), earlier[-1].text
        return self._edit_job(current, current_text, edit_type, edit_info, text, _seed_k(seed, n_iter - 1), sampling)

    def _job(self, ids: list[int], voice: VoicePrompt, params: SamplingParams, text: str) -> Job:
        room = params.max_length - len(ids)
        if room < MIN_NEW_TOKEN_ROOM:
            raise InvalidInputError(
                f"text/prompt too long: the prompt has {len(ids)} tokens, leaving {max(room, 0)} of "
                f"max_length {params.max_length} for the output (need >= {MIN_NEW_TOKEN_ROOM}); shorten the text "
                "or the prompt audio")
        return Job(ids, voice, params, text)

    def _pieces(self, text: str) -> list[str]:
        """`text` as pieces of whole sentences for a split request (each then checked like any text)."""
        if not isinstance(text, str) or not text.strip():
            _check_text(text, "text")
        if len(text) > MAX_SPLIT_TEXT_CHARS:
            raise InvalidInputError(f"text: {len(text)} characters is too long even split (max {MAX_SPLIT_TEXT_CHARS})")
        return split_text(text, SPLIT_PIECE_CHARS)

    def _piece_stream(self, prompt_audio, prompt_text, pieces: list[str], seed, sampling, priority) -> PieceStream:
        """The pieces' requests streamed as one; piece k seeded seed + k."""
        def start(k: int) -> ChunkStream:
            job = self._clone_job(prompt_audio, prompt_text, pieces[k], _seed_k(seed, k), sampling)
            return self._streamer.stream(job, priority)

        return PieceStream(start, len(pieces))

    def _run(self, job: Job, stream: Optional[bool]) -> Audio:
        if not (self.config.stream if stream is None else stream):
            return self._offline.run(job, self._progress_hook())
        return collect(self._streamer.stream(job), job.text)

    def _check_edit(self, edit_type, edit_info, audio_text, text, n_iter) -> None:
        if not isinstance(n_iter, int) or isinstance(n_iter, bool) or not 1 <= n_iter <= 32:
            raise InvalidInputError(f"n_iter: expected an int in [1, 32], got {n_iter!r}")
        if edit_type not in EDIT_TYPES:
            raise InvalidInputError(f"edit_type: unknown edit type {edit_type!r}; allowed: {', '.join(EDIT_TYPES)}")
        build_edit_instruction(edit_type, edit_info, audio_text, text)  # validate before any heavy work

    def _params(self, seed: Optional[int], sampling: Optional[SamplingParams]) -> SamplingParams:
        """The request's SamplingParams with a concrete seed (so every draw is reproducible)."""
        base = sampling or self.default_sampling()
        if not isinstance(base, SamplingParams):
            raise InvalidInputError(f"sampling: expected SamplingParams, got {type(base).__name__}")
        chosen = seed if seed is not None else (base.seed if base.seed is not None else self.config.seed)
        return SamplingParams(**{**_fields(base), "seed": int(chosen)})

    def _voice_key(self, wav: torch.Tensor, sr: int) -> str:
        cfg = self.config
        return audio_key(wav, sr, cfg.resampler, cfg.vq02_dither, cfg.seed)

    def _voice(self, wav: torch.Tensor, sr: int) -> VoicePrompt:
        cfg = self.config
        key = self._voice_key(wav, sr)

        def compute() -> VoicePrompt:
            gen = torch.Generator().manual_seed((int(key[:15], 16) + cfg.seed) % 2**63)
            return encode_voice(self.components, wav, sr, dither=cfg.vq02_dither, generator=gen,
                                resampler=cfg.resampler)

        voice, hit = self.voice_cache.get_or_compute(key, compute)
        if hit:
            self._report("voice cache hit: front end skipped")
        return voice

    def _load(self, audio: AudioInput, what: str) -> tuple[torch.Tensor, int]:
        if isinstance(audio, Audio):
            return audio_from_array(audio.samples, audio.sample_rate, what=what)
        if isinstance(audio, tuple):
            if len(audio) != 2:
                raise InvalidInputError(f"{what}: expected (samples, sample_rate), got a tuple of {len(audio)}")
            samples, sr = audio
            if isinstance(samples, torch.Tensor):
                samples = samples.detach().cpu().numpy()
            return audio_from_array(samples, sr, what=what)
        if isinstance(audio, (str, Path, bytes)):
            return load_audio(audio, what=what)
        raise InvalidInputError(f"{what}: expected a path, bytes, Audio or (samples, sample_rate), "
                                f"got {type(audio).__name__}")

    def _progress_hook(self):
        if not self.config.progress:
            return None
        count = [0]

        def on_token(_token: int) -> None:
            count[0] += 1
            if count[0] % 250 == 0:  # 250 tokens = 6 s of audio
                self._report(f"LLM: {count[0]} audio tokens ({count[0] / 41.67:.1f} s of audio)")

        return on_token

    def _report(self, message: str) -> None:
        if self.config.progress:
            log.info(message)


def scheduler_config(components: Components, config: RuntimeConfig) -> SchedulerConfig:
    """The engine's scheduling policy: KV pool sized from `config.kv_cache_bytes`, decoder chunking
    from the flow config (spec §6), limits from the runtime config."""
    llm = components.llm.config
    itemsize = torch.tensor([], dtype=config.dtype).element_size()
    per_block = 2 * llm.num_hidden_layers * llm.num_attention_groups * llm.head_dim * itemsize * KV_BLOCK_SIZE
    one_request = math.ceil(config.max_length / KV_BLOCK_SIZE)
    num_blocks = min(max(config.kv_cache_bytes // per_block, one_request + 1), config.max_num_seqs * one_request + 1)
    return SchedulerConfig.from_flow(components.flow.cfg, block_size=KV_BLOCK_SIZE, num_blocks=int(num_blocks),
                                     max_num_seqs=config.max_num_seqs, max_model_len=config.max_length,
                                     max_num_batched_tokens=max(config.max_num_batched_tokens, config.max_num_seqs),
                                     ttfa_target_s=config.ttfa_target_s)


def _seed_k(seed: Optional[int], k: int) -> Optional[int]:
    return None if seed is None else seed + k


def _fields(params: SamplingParams) -> dict:
    return {name: getattr(params, name) for name in params.__slots__}


def _joined(parts: list[Audio], text: str) -> Audio:
    """Audio of consecutive pieces as one (token counts summed)."""
    info = {key: sum(p.info.get(key, 0) for p in parts) for key in ("prompt_tokens", "generated_tokens")}
    cut = any(p.info.get("stop_reason") == "length" for p in parts)
    info.update(pieces=len(parts), stop_reason="length" if cut else parts[-1].info.get("stop_reason"))
    return Audio(np.concatenate([p.samples for p in parts]).astype(np.float32, copy=False), parts[0].sample_rate,
                 text, info)


def _check_text(value: object, name: str) -> None:
    if not isinstance(value, str):
        raise InvalidInputError(f"{name}: expected a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidInputError(f"{name}: must not be empty")
    if len(value) > MAX_TEXT_CHARS:
        raise InvalidInputError(f"{name}: {len(value)} characters is too long for one request (max "
                                f"{MAX_TEXT_CHARS}); clone with split=True (CLI --split) to speak it piece by piece")
