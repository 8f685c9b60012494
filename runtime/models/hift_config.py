"""HiFT vocoder configuration (the `hift` node of cosyvoice.yaml, spec §5.1 / §5.7)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from ..errors import CheckpointError, InvalidInputError
from ..loading.yaml_config import TAG_KEY, node, read_yaml

_DILATIONS_3x3 = ((1, 3, 5), (1, 3, 5), (1, 3, 5))


@dataclass(slots=True)
class HiFTConfig:
    """Sizes and NSF constants of `HiFTGenerator` (+ its `ConvRNNF0Predictor`).

    Field names follow upstream's constructor arguments; `istft_params` is split into
    `istft_n_fft` / `istft_hop` and the f0 predictor's arguments are prefixed `f0_`.
    """

    in_channels: int = 80
    base_channels: int = 512
    nb_harmonics: int = 8
    sampling_rate: int = 24000
    nsf_alpha: float = 0.1
    nsf_sigma: float = 0.003
    nsf_voiced_threshold: float = 10.0
    upsample_rates: tuple[int, ...] = (8, 5, 3)
    upsample_kernel_sizes: tuple[int, ...] = (16, 11, 7)
    istft_n_fft: int = 16
    istft_hop: int = 4
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = _DILATIONS_3x3
    source_resblock_kernel_sizes: tuple[int, ...] = (7, 7, 11)
    source_resblock_dilation_sizes: tuple[tuple[int, ...], ...] = _DILATIONS_3x3
    lrelu_slope: float = 0.1
    audio_limit: float = 0.99
    f0_num_class: int = 1
    f0_in_channels: int = 80
    f0_cond_channels: int = 512
    # Not an upstream argument: upstream hard-codes the final LeakyReLU as F.leaky_relu(x)
    # (torch default slope 0.01) instead of using lrelu_slope (spec §5.7, §9 item 9).
    final_lrelu_slope: float = field(default=0.01)

    def __post_init__(self) -> None:
        for name in ("upsample_rates", "upsample_kernel_sizes", "resblock_kernel_sizes",
                     "source_resblock_kernel_sizes"):
            setattr(self, name, _int_tuple(getattr(self, name), name))
        for name in ("resblock_dilation_sizes", "source_resblock_dilation_sizes"):
            setattr(self, name, tuple(_int_tuple(d, name) for d in _seq(getattr(self, name), name)))
        for name in ("in_channels", "base_channels", "sampling_rate", "istft_n_fft", "istft_hop",
                     "f0_num_class", "f0_in_channels", "f0_cond_channels"):
            _require(isinstance(getattr(self, name), int) and getattr(self, name) > 0,
                     name, "a positive int", getattr(self, name))
        _require(isinstance(self.nb_harmonics, int) and self.nb_harmonics >= 0,
                 "nb_harmonics", "an int >= 0", self.nb_harmonics)
        stages = len(self.upsample_rates)
        _require(stages >= 1, "upsample_rates", "at least one stage", self.upsample_rates)
        for name in ("upsample_kernel_sizes", "source_resblock_kernel_sizes", "source_resblock_dilation_sizes"):
            _require(len(getattr(self, name)) == stages, name,
                     f"one entry per upsample stage ({stages})", getattr(self, name))
        _require(len(self.resblock_dilation_sizes) == len(self.resblock_kernel_sizes),
                 "resblock_dilation_sizes", "one entry per resblock kernel", self.resblock_dilation_sizes)
        _require(len(self.resblock_kernel_sizes) >= 1, "resblock_kernel_sizes", "at least one kernel",
                 self.resblock_kernel_sizes)
        _require(self.base_channels % (2 ** stages) == 0, "base_channels",
                 f"divisible by 2**{stages} (channels halve at each upsample stage)", self.base_channels)
        _require(all(k >= u for k, u in zip(self.upsample_kernel_sizes, self.upsample_rates)),
                 "upsample_kernel_sizes", "each kernel >= its upsample rate", self.upsample_kernel_sizes)
        _require(self.istft_n_fft % 2 == 0, "istft_n_fft", "an even FFT size", self.istft_n_fft)
        # The f0 head is squeezed to [B, T]: upstream only supports one class.
        _require(self.f0_num_class == 1, "f0_num_class", "1 (f0 regression)", self.f0_num_class)
        _require(self.f0_in_channels == self.in_channels, "f0_in_channels",
                 f"equal to in_channels ({self.in_channels}): both read the same mel", self.f0_in_channels)
        for name in ("nsf_alpha", "nsf_sigma", "audio_limit"):
            value = getattr(self, name)
            _require(isinstance(value, (int, float)) and math.isfinite(value) and value > 0, name,
                     "a positive finite number", value)
        for name in ("nsf_voiced_threshold", "lrelu_slope", "final_lrelu_slope"):
            value = getattr(self, name)
            _require(isinstance(value, (int, float)) and math.isfinite(value), name, "a finite number", value)

    # -- derived sizes ---------------------------------------------------------------
    @property
    def upsample_scale(self) -> int:
        """Waveform samples per mel frame (480 upstream = 8·5·3 upsampling × iSTFT hop 4)."""
        return math.prod(self.upsample_rates) * self.istft_hop

    @property
    def n_harmonic_channels(self) -> int:
        """Sine channels of the NSF source: the fundamental plus `nb_harmonics` overtones."""
        return self.nb_harmonics + 1

    @property
    def spec_channels(self) -> int:
        """Channels of [real | imag] STFT frames: n_fft + 2."""
        return self.istft_n_fft + 2

    def stage_channels(self, stage: int) -> int:
        """Channels after upsample stage `stage` (base / 2**(stage+1))."""
        return self.base_channels // (2 ** (stage + 1))

    # -- presets -----------------------------------------------------------------------
    @classmethod
    def full(cls) -> "HiFTConfig":
        """The shipped CosyVoice-300M-25Hz HiFT (spec §5.1): base 512, f0 cond 512."""
        return cls(base_channels=512, f0_cond_channels=512)

    @classmethod
    def tiny(cls) -> "HiFTConfig":
        """Small dims for fast CPU runs ("dummy:tiny"): base 32, cond 32, like the fixtures."""
        return cls(base_channels=32, f0_cond_channels=32)

    # -- parsing -----------------------------------------------------------------------
    @classmethod
    def from_yaml_node(cls, hift: Mapping[str, Any], what: str = "cosyvoice.yaml hift") -> "HiFTConfig":
        """Build from the `hift` mapping `read_yaml` gives (tags already turned into dicts)."""
        if not isinstance(hift, Mapping):
            raise CheckpointError(f"{what}: expected a mapping, got {type(hift).__name__}")
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in hift.items():
            if key == TAG_KEY:
                continue
            if key == "istft_params":
                istft = value if isinstance(value, Mapping) else {}
                if "n_fft" in istft:
                    kwargs["istft_n_fft"] = istft["n_fft"]
                if "hop_len" in istft:
                    kwargs["istft_hop"] = istft["hop_len"]
            elif key == "f0_predictor":
                pred = value if isinstance(value, Mapping) else {}
                for sub, ours in (("num_class", "f0_num_class"), ("in_channels", "f0_in_channels"),
                                  ("cond_channels", "f0_cond_channels")):
                    if sub in pred:
                        kwargs[ours] = pred[sub]
            elif key in known:
                kwargs[key] = value
            # Unknown keys (future upstream options) are ignored: they cannot change the
            # tensors we load, and a key/shape mismatch is caught by the strict loader.
        try:
            return cls(**kwargs)
        except InvalidInputError as exc:
            raise CheckpointError(f"{what}: {exc}") from exc

    @classmethod
    def from_cosyvoice_yaml(cls, path: str | Path) -> "HiFTConfig":
        """Read the `hift` node of an upstream `cosyvoice.yaml`."""
        cfg = read_yaml(path, "cosyvoice.yaml")
        return cls.from_yaml_node(node(cfg, "hift", what=f"cosyvoice.yaml {path}"), what=f"{path}: hift")


def _seq(value: Any, name: str) -> tuple[Any, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise InvalidInputError(f"HiFTConfig.{name}: expected a list, got {value!r}")
    return tuple(value)


def _int_tuple(value: Any, name: str) -> tuple[int, ...]:
    items = _seq(value, name)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in items):
        raise InvalidInputError(f"HiFTConfig.{name}: expected positive ints, got {value!r}")
    return items


def _require(ok: bool, name: str, expected: str, got: Any) -> None:
    if not ok:
        raise InvalidInputError(f"HiFTConfig.{name}: expected {expected}, got {got!r}")
