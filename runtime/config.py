"""Runtime configuration: devices, dtypes and upstream-behaviour switches.

Defaults reproduce upstream Step-Audio-EditX (spec §4.5, §5, §9) except where noted;
every value is validated when the config is built, so a typo fails at start-up with a
message naming the field, not deep inside a model.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

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
        onnx_provider: 'auto' (CUDA EP when the device is CUDA and onnxruntime has it, else CPU,
            logged once), 'cpu', or 'cuda' (error if unavailable).
        resampler: prompt-audio resampling: 'sinc' (torchaudio-exact, matches upstream's features)
            or 'soxr' (libsoxr HQ: faster on long audio, features differ slightly from upstream).
        voice_cache_bytes: memory bound of the per-voice front-end cache (0 disables it).
        cuda_graphs: on CUDA, replay the LLM decode step from CUDA graphs (one capture per
            attention-width bucket); eager decode otherwise.
        progress: print stage progress to stderr on long work.
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
    resampler: str = "sinc"
    voice_cache_bytes: int = 256 * 2**20
    cuda_graphs: bool = True
    progress: bool = False

    def __post_init__(self) -> None:
        self.device = parse_device(self.device)
        self.dtype = parse_dtype(self.dtype, "dtype")
        self.decoder_dtype = parse_dtype(self.decoder_dtype, "decoder_dtype")
        self.frontend_dtype = parse_dtype(self.frontend_dtype, "frontend_dtype")
        if self.device.type == "cpu" and torch.float16 in (self.dtype, self.decoder_dtype):
            # CPU fp16 kernels are missing for several ops (and slow); bf16 works on CPU.
            raise InvalidInputError("dtype float16 is only supported on CUDA; use float32 or bfloat16 on CPU")
        _check_range("vq02_dither", self.vq02_dither, 0.0, 100.0)
        _check_range("cfg_rate", self.cfg_rate, 0.0, 10.0)
        if not 1 <= self.n_timesteps <= 1000:
            raise InvalidInputError(f"n_timesteps: {self.n_timesteps} is outside [1, 1000]")
        if not 16 <= self.max_length <= 65536:
            raise InvalidInputError(f"max_length: {self.max_length} is outside [16, 65536]")
        if self.voice_cache_bytes < 0:
            raise InvalidInputError(f"voice_cache_bytes: {self.voice_cache_bytes} must be >= 0")
        if self.resampler not in ("sinc", "soxr"):
            raise InvalidInputError(f"resampler: {self.resampler!r}; use 'sinc' or 'soxr'")
        if self.onnx_provider not in ("auto", "cpu", "cuda"):
            raise InvalidInputError(f"onnx_provider: {self.onnx_provider!r}; use 'auto', 'cpu' or 'cuda'")

    def with_overrides(self, **kwargs) -> "RuntimeConfig":
        """A copy with some fields replaced (and validated again)."""
        return replace(self, **kwargs)


def _check_range(name: str, value: float, lo: float, hi: float) -> None:
    if not (lo <= float(value) <= hi):
        raise InvalidInputError(f"{name}: {value} is outside [{lo}, {hi}]")
