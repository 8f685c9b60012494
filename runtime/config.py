"""Runtime configuration: devices, dtypes and upstream-behaviour switches.

Defaults reproduce upstream Step-Audio-EditX (spec §4.5, §5, §9) except where noted;
every value is validated when the config is built, so a typo fails at start-up with a
message naming the field, not deep inside a model.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping

import torch

from .errors import BackendUnavailableError, InvalidInputError

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


def parse_dtype(value: str | torch.dtype, what: str = "dtype") -> torch.dtype:
    """'bf16' / 'bfloat16' / torch.bfloat16 -> torch.bfloat16; anything else is an InvalidInputError."""
    if isinstance(value, torch.dtype):
        if value in DTYPES.values():
            return value
    elif isinstance(value, str) and value.lower() in DTYPES:
        return DTYPES[value.lower()]
    raise InvalidInputError(f"{what}: unsupported value {value!r}; use one of float32, bfloat16, float16")


# Stages that can run on another backend than torch (editx.export.backends), and the backends.
BACKEND_STAGES = ("dit", "flow_encoder", "hift", "vq02")
BACKEND_NAMES = ("torch", "onnxruntime", "tensorrt")


def parse_backends(value: str | Mapping[str, str] | None) -> dict[str, str]:
    """Backend of every stage: None / {} = torch everywhere; "onnxruntime" = that backend for every
    stage; "dit=tensorrt,hift=onnxruntime" or {"dit": "tensorrt"} = those stages (others torch)."""
    choice = {stage: "torch" for stage in BACKEND_STAGES}
    if value is None:
        return choice
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
        if len(items) == 1 and "=" not in items[0]:
            value = {stage: items[0] for stage in BACKEND_STAGES}
        else:
            pairs = [item.split("=", 1) for item in items]
            if any(len(pair) != 2 for pair in pairs):
                raise InvalidInputError(f"backends: {value!r}; use a backend name or STAGE=BACKEND[,STAGE=BACKEND]")
            value = {k.strip(): v.strip() for k, v in pairs}
    if not isinstance(value, Mapping):
        raise InvalidInputError(f"backends: expected a mapping stage -> backend or a string, got {type(value).__name__}")
    for stage, name in value.items():
        if stage not in BACKEND_STAGES:
            raise InvalidInputError(f"backends: unknown stage {stage!r}; stages are {', '.join(BACKEND_STAGES)}")
        if name not in BACKEND_NAMES:
            raise InvalidInputError(f"backends[{stage}]: unknown backend {name!r}; use one of {', '.join(BACKEND_NAMES)}")
        choice[stage] = name
    return choice


def parse_device(value: str | torch.device) -> torch.device:
    """'cpu' / 'cuda' / 'cuda:1'; a CUDA device on a machine without CUDA is a BackendUnavailableError."""
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError) as exc:
        raise InvalidInputError(f"device: cannot parse {value!r}; use 'cpu' or 'cuda[:N]'") from exc
    if dev.type not in ("cpu", "cuda"):
        raise InvalidInputError(f"device: {dev.type!r} is not supported; use 'cpu' or 'cuda[:N]'")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BackendUnavailableError("device 'cuda' requested but torch sees no CUDA device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise BackendUnavailableError(f"device {dev}: only {torch.cuda.device_count()} CUDA device(s)")
    return dev


@dataclass(slots=True)
class RuntimeConfig:
    """Everything the Runtime needs besides the model files.

    Attributes:
        device: where every model runs ('cpu', 'cuda', 'cuda:N').
        dtype: LLM weights/activations (upstream: bfloat16 on GPU).
        decoder_dtype: flow + HiFT dtype (upstream: float32). Defaults to float32.
        frontend_dtype: vq02 encoder dtype (upstream: float32).
        seed: default seed of per-request RNGs (sampling, vq02 dither, NSF draws).
        noise_seed: seed of the fixed ODE start-noise buffer, drawn once per runtime
            (upstream draws randn(1, 80, 30000) once per process, spec §5.6).
        vq02_dither: kaldi fbank dither of the vq02 front end (upstream 1.0; 0.0 = deterministic
            features independent of the seed).
        n_timesteps / cfg_rate: Euler steps and classifier-free guidance of the flow decoder.
        max_length: prompt + generated LLM tokens (upstream 8192).
        audio_only_logits: mask LLM logits to the 5,120 audio ids + EOS before sampling.
            Upstream does not mask (spec §4.6) and would crash on a non-audio id; masking
            keeps every request decodable and changes nothing while the model emits audio ids.
            The streaming engine then computes and samples only those 5,121 logits (LM head rows).
        onnx_provider: 'auto' (CUDA EP when the device is CUDA and onnxruntime has it, else CPU,
            logged once), 'cpu', or 'cuda' (error if unavailable).
        onnx_threads: intra-op threads of a front-end graph on the CPU provider; None = min(4, CPUs).
            Upstream uses 1, on the CUDA provider (also 1 here). The real vq06 graph on the CPU
            provider takes ~0.5 s per 5 s of prompt with one thread on a 2-core machine (~0.37 s with 2).
        resampler: prompt-audio resampling: 'sinc' (torchaudio-exact, matches upstream's features)
            or 'soxr' (libsoxr HQ: faster on long audio, features differ slightly from upstream).
        voice_cache_bytes: memory bound of the per-voice front-end cache (0 disables it).
        stream: clone/edit collect the stream of the continuous-batching engine (default);
            False runs upstream's whole-utterance path (offline decoder, matches upstream's audio).
        kv_cache_bytes: the engine's paged KV pool (None: 4 GiB on CUDA, 128 MiB on CPU; the full
            model needs 32 KiB per token in bf16; never less than one max_length request, never more
            than max_num_seqs of them).
        max_num_seqs / max_num_batched_tokens: concurrent requests in the engine and tokens per step.
        ttfa_target_s: the scheduler's first-audio deadline (most urgent streams decode first).
        batch_decoder: run the decoder chunks of concurrent streams as one batch (faster; audio equals
            per-stream decoding up to floating-point reduction order). False: each stream alone,
            bit-identical to running the requests one by one.
        overlap_decoder: run the streams' decoder items (flow set-up, chunks, vocoder) on their own
            thread (and CUDA stream) so LLM steps never wait for them; False runs them inside the
            engine step, after the LLM forward. Measured on CPU (dummy:tiny, 2 cores): TTFA p50
            921 -> 761 ms at c=1, 2204 -> 1851 ms at c=4; audio-s/s 1.73 -> 2.09 at c=4.
        cuda_graphs: on CUDA, replay the LLM decode step from CUDA graphs (one capture per
            attention-width bucket) and the streams' flow set-ups / chunks from CUDA graphs over the
            DiT slot pool (one capture per batch x width bucket); eager otherwise.
        decoder_slots: streams whose streaming DiT caches live in a preallocated slot pool (static
            shapes, so their ODE solves replay from CUDA graphs); more streams at once, longer
            prompts or exported DiT graphs use packed caches (eager). None (auto): on CUDA 16, fewer
            if 16 would take more than 30% of the free device memory; 0 elsewhere (on CPU the pool
            only adds copies). Memory: 1.31 MB per frame per stream with the real shapes in fp32,
            frames = decoder_slot_prompt_frames + 96 + 204: 1.05 GB per stream (+1 scratch stream).
        decoder_slot_prompt_frames: prompt mel frames one slot holds (50 per second of prompt audio).
        stream_chunk_frames: token frames per streamed decoder chunk (first, second, ...; the last
            repeats), multiples of 3; None = the model's (upstream 15, 24, 48). The first chunk waits
            for its frames + 3 lookahead frames of LLM output (15 frames = 30 ids: ~115 ms of decode
            at 262 tok/s on an H200), so a smaller first chunk reaches first audio sooner; audio
            near the early chunk boundaries then deviates more from upstream's chunking.
        progress: print stage progress to stderr on long work.
        backends: stage -> 'torch' | 'onnxruntime' | 'tensorrt' for the stages in BACKEND_STAGES
            (DiT estimator, flow encoder, HiFT decode, vq02 encoder); see `parse_backends` for the
            accepted forms. A requested backend that is unavailable is an error, never a fallback.
        export_dir: folder written by `editx export` to take the ONNX graphs (and TensorRT plans)
            from; None = export the needed graphs from the loaded weights at start-up.
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    decoder_dtype: torch.dtype = torch.float32
    frontend_dtype: torch.dtype = torch.float32
    seed: int = 0
    noise_seed: int = 0
    vq02_dither: float = 1.0
    n_timesteps: int = 10
    cfg_rate: float = 0.7
    max_length: int = 8192
    audio_only_logits: bool = True
    onnx_provider: str = "auto"
    onnx_threads: int | None = None
    resampler: str = "sinc"
    voice_cache_bytes: int = 256 * 2**20
    stream: bool = True
    kv_cache_bytes: int | None = None
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    ttfa_target_s: float = 0.25
    batch_decoder: bool = True
    overlap_decoder: bool = True
    cuda_graphs: bool = True
    decoder_slots: int | None = None
    decoder_slot_prompt_frames: int = 500
    stream_chunk_frames: tuple[int, ...] | None = None
    progress: bool = False
    backends: dict[str, str] = field(default_factory=dict)
    export_dir: str | None = None

    def __post_init__(self) -> None:
        self.device = parse_device(self.device)
        self.dtype = parse_dtype(self.dtype, "dtype")
        self.decoder_dtype = parse_dtype(self.decoder_dtype, "decoder_dtype")
        self.frontend_dtype = parse_dtype(self.frontend_dtype, "frontend_dtype")
        if self.device.type == "cpu" and torch.float16 in (self.dtype, self.decoder_dtype):
            # CPU fp16 kernels are missing for several ops (and slow); bf16 works on CPU.
            raise InvalidInputError("dtype float16 is only supported on CUDA; use float32 or bfloat16 on CPU")
        for name in ("audio_only_logits", "stream", "batch_decoder", "overlap_decoder", "cuda_graphs", "progress"):
            if not isinstance(getattr(self, name), bool):  # "no" or 0 would silently mean something else
                raise InvalidInputError(f"{name}: expected True or False, got {getattr(self, name)!r}")
        _check_range("vq02_dither", self.vq02_dither, 0.0, 100.0)
        _check_range("cfg_rate", self.cfg_rate, 0.0, 10.0)
        if not 1 <= self.n_timesteps <= 1000:
            raise InvalidInputError(f"n_timesteps: {self.n_timesteps} is outside [1, 1000]")
        if not 16 <= self.max_length <= 65536:
            raise InvalidInputError(f"max_length: {self.max_length} is outside [16, 65536]")
        if self.kv_cache_bytes is None:
            self.kv_cache_bytes = (4 if self.device.type == "cuda" else 0.125) * 2**30
        self.kv_cache_bytes = int(self.kv_cache_bytes)
        for name in ("kv_cache_bytes", "max_num_seqs", "max_num_batched_tokens"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"{name}: {getattr(self, name)} must be >= 1")
        _check_range("ttfa_target_s", self.ttfa_target_s, 1e-3, 60.0)
        if self.decoder_slots is not None:  # None = auto: sized when the pool is built
            _check_int("decoder_slots", self.decoder_slots, 0, 4096)
        _check_int("decoder_slot_prompt_frames", self.decoder_slot_prompt_frames, 1, 4096)
        if self.voice_cache_bytes < 0:
            raise InvalidInputError(f"voice_cache_bytes: {self.voice_cache_bytes} must be >= 0")
        if self.stream_chunk_frames is not None:
            self.stream_chunk_frames = _chunk_frames(self.stream_chunk_frames)
        if self.resampler not in ("sinc", "soxr"):
            raise InvalidInputError(f"resampler: {self.resampler!r}; use 'sinc' or 'soxr'")
        if self.onnx_provider not in ("auto", "cpu", "cuda"):
            raise InvalidInputError(f"onnx_provider: {self.onnx_provider!r}; use 'auto', 'cpu' or 'cuda'")
        if self.onnx_threads is not None and (isinstance(self.onnx_threads, bool)
                                              or not isinstance(self.onnx_threads, int) or self.onnx_threads < 1):
            raise InvalidInputError(f"onnx_threads: expected a positive int or None, got {self.onnx_threads!r}")
        self.backends = parse_backends(self.backends)
        if self.device.type != "cuda" and "tensorrt" in self.backends.values():
            stages = [s for s, b in self.backends.items() if b == "tensorrt"]
            raise BackendUnavailableError(f"backends: tensorrt ({', '.join(stages)}) needs a CUDA device, "
                                          f"the runtime device is {self.device}")
        if self.export_dir is not None:
            self.export_dir = str(self.export_dir)

    def with_overrides(self, **kwargs) -> "RuntimeConfig":
        """A copy with some fields replaced (and validated again)."""
        return replace(self, **kwargs)


def _chunk_frames(value) -> tuple[int, ...]:
    """stream_chunk_frames as a tuple: "6,24,48" or a sequence of ints, each a positive multiple of 3
    (mixed ids come in groups of 5 = 3 token frames) and at most 3000 (60 s)."""
    parts = value.split(",") if isinstance(value, str) else value
    try:
        frames = tuple(int(str(p).strip()) for p in parts)
    except (TypeError, ValueError):
        raise InvalidInputError(f"stream_chunk_frames: expected token frame counts like (15, 24, 48), "
                                f"got {value!r}") from None
    if not frames or any(f < 3 or f % 3 or f > 3000 for f in frames):
        raise InvalidInputError(f"stream_chunk_frames: each chunk must be a multiple of 3 token frames in "
                                f"[3, 3000], got {value!r}")
    return frames


def _check_int(name: str, value, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidInputError(f"{name}: expected an int in [{lo}, {hi}], got {value!r}")


def _check_range(name: str, value: float, lo: float, hi: float) -> None:
    if not (lo <= float(value) <= hi):
        raise InvalidInputError(f"{name}: {value} is outside [{lo}, {hi}]")
