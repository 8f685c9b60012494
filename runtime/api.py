"""The public Runtime: clone a voice, or edit speech by instruction.

    rt = editx.Runtime.from_pretrained("dummy:tiny")           # or an upstream install path
    audio = rt.clone("prompt.wav", "prompt transcript", "Text to speak.")
    audio.save("out.wav")                                       # 16-bit PCM, 24 kHz
    edits = rt.edit("in.wav", "its transcript", "emotion", "happy", n_iter=2)

The Runtime holds only shared read-only models (`Components`), the config and the fixed
ODE start noise; every call builds its own request state (RNGs, KV cache, decoder
state), so calls from several threads do not interfere.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from .config import RuntimeConfig, parse_device
from .engine.generate import audio_logit_bias, generate
from .engine.model_runner import GraphedDecoder
from .engine.sampling import SamplingParams
from .engine.token2wav import Token2Wav, to_numpy
from .engine.voice import VoicePrompt, encode_voice
from .engine.voice_cache import VoiceCache, audio_key
from .errors import InvalidInputError
from .frontend.audio_io import audio_from_array, load_audio
from .loading.components import Components, check_vocab, load_components
from .models.text import EDIT_TYPES, build_edit_instruction, clone_speaker_id, encode_clone_prompt, \
    encode_edit_prompt
from .types import OUTPUT_SAMPLE_RATE, Audio

log = logging.getLogger("editx")

AudioInput = Union[str, Path, bytes, Audio, tuple]
NOISE_FRAMES = 30000          # upstream rand_noise: 600 s at 50 mel frames/s
MAX_TEXT_CHARS = 4000         # far beyond one utterance; bounds tokenizer work on hostile input
MIN_NEW_TOKEN_ROOM = 64       # ~1.5 s of audio: a prompt must leave at least this much to generate


class Runtime:
    """Step-Audio-EditX inference (see module doc). Build with `Runtime.from_pretrained`."""

    def __init__(self, components: Components, config: RuntimeConfig) -> None:
        check_vocab(components.llm.config)
        self.components = components
        self.config = config
        gen = torch.Generator().manual_seed(config.noise_seed)
        # One fixed start-noise buffer per runtime, as upstream draws one per process (spec §5.6).
        noise = torch.randn(1, components.flow.cfg.output_size, NOISE_FRAMES, generator=gen)
        self.decoder = Token2Wav(components.flow, components.hift, noise.to(config.device), config.n_timesteps)
        self.voice_cache = VoiceCache(config.voice_cache_bytes)
        self._graphed: Optional[GraphedDecoder] = None
        self._graphed_init = threading.Lock()
        self._logit_bias = None
        if config.audio_only_logits:
            self._logit_bias = audio_logit_bias(components.llm.config.vocab_size, components.llm.config.eos_token_id,
                                                config.device)

    # -- construction ------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model: str | Path, *, device: str = "cpu", dtype: Optional[str] = None,
                        decoder_dtype: Optional[str] = None, seed: int = 0, **overrides) -> "Runtime":
        """Load an upstream install folder, or a preset: "dummy:tiny" (seconds on CPU), "dummy:full"
        (real shapes, random weights, for GPU benchmarks).

        dtype: LLM dtype (default bfloat16 on CUDA as upstream, float32 on CPU);
        decoder_dtype: flow + HiFT (default float32 as upstream). Other RuntimeConfig fields
        (n_timesteps, vq02_dither, audio_only_logits, onnx_provider, progress, ...) as keywords.
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

    # -- public API ---------------------------------------------------------------------
    def clone(self, prompt_audio: AudioInput, prompt_text: str, text: str, *, seed: Optional[int] = None,
              sampling: Optional[SamplingParams] = None) -> Audio:
        """Speak `text` in the voice of `prompt_audio` (whose transcript is `prompt_text`).

        prompt_audio: a file path, encoded bytes, an `Audio`, or `(samples, sample_rate)`; >= 16 kHz.
        Returns mono float32 Audio at 24 kHz.
        """
        _check_text(prompt_text, "prompt_text")
        _check_text(text, "text")
        wav, sr = self._load(prompt_audio, "prompt_audio")
        req = self._request(seed, sampling)
        voice = self._voice(wav, sr)
        speaker = clone_speaker_id(prompt_text, wav)
        ids = encode_clone_prompt(self.components.text, text, prompt_text, speaker, voice.token_str)
        return self._synthesize(ids, voice, req, text)

    def edit(self, audio: AudioInput, audio_text: str, edit_type: str, edit_info: Optional[str] = None,
             text: Optional[str] = None, n_iter: int = 1, *, seed: Optional[int] = None,
             sampling: Optional[SamplingParams] = None) -> list[Audio]:
        """Edit `audio` (transcript `audio_text`): emotion / style / speed / paralinguistic / denoise / vad.

        Iteration k+1 edits the output of iteration k after a 16-bit 24 kHz WAV round trip, with
        the previous output's text as its transcript (upstream tts_infer.py, spec §2.4).
        Returns one Audio per iteration.
        """
        if not isinstance(n_iter, int) or isinstance(n_iter, bool) or not 1 <= n_iter <= 32:
            raise InvalidInputError(f"n_iter: expected an int in [1, 32], got {n_iter!r}")
        if edit_type not in EDIT_TYPES:
            raise InvalidInputError(f"edit_type: unknown edit type {edit_type!r}; allowed: {', '.join(EDIT_TYPES)}")
        build_edit_instruction(edit_type, edit_info, audio_text, text)  # validate before any heavy work
        current: AudioInput = audio
        current_text = audio_text
        results: list[Audio] = []
        for k in range(n_iter):
            req = self._request(None if seed is None else seed + k, sampling)
            out = self._edit_once(current, current_text, edit_type, edit_info, text, req)
            results.append(out)
            current, current_text = out.to_pcm16_roundtrip(), out.text
        return results

    def encode_voice(self, audio: AudioInput) -> VoicePrompt:
        """Front-end results (vq02 + vq06 codes, prompt mel, x-vector) of one recording, cached per voice.

        The vq02 dither noise is seeded from the audio's content hash and the runtime seed, so
        a voice always gets the same codes and the cache is exact.
        """
        wav, sr = self._load(audio, "audio")
        return self._voice(wav, sr)

    def _voice(self, wav: torch.Tensor, sr: int) -> VoicePrompt:
        cfg = self.config
        key = audio_key(wav, sr, cfg.resampler, cfg.vq02_dither, cfg.seed)

        def compute() -> VoicePrompt:
            gen = torch.Generator().manual_seed((int(key[:15], 16) + cfg.seed) % 2**63)
            return encode_voice(self.components, wav, sr, dither=cfg.vq02_dither, generator=gen,
                                resampler=cfg.resampler)

        voice, hit = self.voice_cache.get_or_compute(key, compute)
        if hit:
            self._report("voice cache hit: front end skipped")
        return voice

    # -- internals ----------------------------------------------------------------------
    def _edit_once(self, audio: AudioInput, audio_text: str, edit_type: str, edit_info: Optional[str],
                   text: Optional[str], req: SamplingParams) -> Audio:
        instruction = build_edit_instruction(edit_type, edit_info, audio_text, text)
        voice = self.encode_voice(audio)
        ids = encode_edit_prompt(self.components.text, instruction, voice.token_str)
        out_text = text if edit_type == "paralinguistic" else audio_text
        return self._synthesize(ids, voice, req, out_text)

    def _request(self, seed: Optional[int], sampling: Optional[SamplingParams]) -> SamplingParams:
        """The request's SamplingParams with a concrete seed (so every draw is reproducible)."""
        base = sampling or self.default_sampling()
        if not isinstance(base, SamplingParams):
            raise InvalidInputError(f"sampling: expected SamplingParams, got {type(base).__name__}")
        chosen = seed if seed is not None else (base.seed if base.seed is not None else self.config.seed)
        return SamplingParams(**{**_fields(base), "seed": int(chosen)})

    def _synthesize(self, prompt_ids: list[int], voice: VoicePrompt, req: SamplingParams, text: str) -> Audio:
        room = req.max_length - len(prompt_ids)
        if room < MIN_NEW_TOKEN_ROOM:
            raise InvalidInputError(
                f"text/prompt too long: the prompt has {len(prompt_ids)} tokens, leaving {max(room, 0)} of "
                f"max_length {req.max_length} for the output (need >= {MIN_NEW_TOKEN_ROOM}); shorten the text "
                "or the prompt audio"
            )
        t0 = _clock(self.config.device)
        result = self._generate(prompt_ids, req)
        t1 = _clock(self.config.device)
        mixed = [i - 65536 for i in result.ids]
        hift_gen = torch.Generator(device=self.config.device).manual_seed(req.seed + 1)
        if len(mixed) == 0:
            samples = np.zeros(0, dtype=np.float32)
        else:
            speech, _ = self.decoder.offline(torch.tensor(mixed), voice.conditioning, generator=hift_gen)
            samples = to_numpy(speech)
        t2 = _clock(self.config.device)
        info = {**voice.timings, "prompt_tokens": len(prompt_ids), "generated_tokens": len(result.raw_ids),
                "stop_reason": result.stop_reason, "llm_s": t1 - t0, "token2wav_s": t2 - t1,
                "audio_s": len(samples) / OUTPUT_SAMPLE_RATE}
        self._report(f"done: {info['audio_s']:.2f} s of audio from {len(result.raw_ids)} tokens "
                     f"(LLM {info['llm_s']:.2f} s, decoder {info['token2wav_s']:.2f} s)")
        return Audio(samples, OUTPUT_SAMPLE_RATE, text, info)

    def _generate(self, prompt_ids: list[int], req: SamplingParams):
        """LLM generation; on CUDA through the graphed decoder (one request at a time on it)."""
        llm = self.components.llm
        kwargs = dict(on_token=self._progress_hook(), logit_bias=self._logit_bias)
        runner = self._graph_runner()
        if runner is None:
            return generate(llm, prompt_ids, req, **kwargs)
        with runner.lock:
            return generate(llm, prompt_ids, req, cache=runner.cache, decode_step=runner.step, **kwargs)

    def _graph_runner(self) -> Optional[GraphedDecoder]:
        if not (self.config.cuda_graphs and self.config.device.type == "cuda"):
            return None
        with self._graphed_init:
            if self._graphed is None:
                self._graphed = GraphedDecoder(self.components.llm, batch=1, capacity=self.config.max_length)
        return self._graphed

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
        start = time.perf_counter()
        count = [0]

        def on_token(_token: int) -> None:
            count[0] += 1
            if count[0] % 250 == 0:  # 250 tokens = 6 s of audio
                self._report(f"LLM: {count[0]} audio tokens ({count[0] / 41.67:.1f} s of audio) "
                             f"in {time.perf_counter() - start:.1f} s")

        return on_token

    def _report(self, message: str) -> None:
        if self.config.progress:
            log.info(message)


def _fields(params: SamplingParams) -> dict:
    return {name: getattr(params, name) for name in params.__slots__}


def _check_text(value: object, name: str) -> None:
    if not isinstance(value, str):
        raise InvalidInputError(f"{name}: expected a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidInputError(f"{name}: must not be empty")
    if len(value) > MAX_TEXT_CHARS:
        raise InvalidInputError(f"{name}: {len(value)} characters is too long (max {MAX_TEXT_CHARS}); "
                                "split long text into sentences")


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
