"""Configuration of the flow-matching decoder (upstream `CausalMaskedDiffWithXvec`).

Three nested dataclasses mirror the three `!new:` nodes of `cosyvoice.yaml`'s `flow`
entry: the conformer upsample encoder, the DiT estimator, and the flow model around
them. Streaming constants that upstream hard-codes in `CosyVoice_stream_impl_`
(chunk sizes, DiT attention-cache left context, vocoder mel cache) are fields of
`FlowConfig` so token2wav can read them from one place.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ...errors import CheckpointError, InvalidInputError
from ...loading.yaml_config import TAG_KEY, node, read_yaml

# Encoder variants we implement: ESPnet relative positions + rel-pos self-attention.
_SUPPORTED_POS_ENC = ("rel_pos_espnet",)
_SUPPORTED_SELF_ATTN = ("rel_selfattn",)
_SUPPORTED_ACTIVATIONS = ("swish",)


def _require(cond: bool, what: str) -> None:
    if not cond:
        raise InvalidInputError(what)


@dataclass(slots=True)
class FlowEncoderConfig:
    """`UpsampleConformerEncoderV2` sizes (spec §5.5, §8.3)."""

    input_size: int = 512
    output_size: int = 512
    attention_heads: int = 8  # UNCONFIRMED upstream (spec §5.1); 8 = S2M / weight-shape consistent
    linear_units: int = 2048
    num_blocks: int = 6
    num_up_blocks: int = 4
    pre_lookahead_len: int = 3
    up_stride: int = 2
    up_scale_factor: float = 2.0
    key_bias: bool = True
    normalize_before: bool = True
    activation_type: str = "swish"
    pos_enc_layer_type: str = "rel_pos_espnet"
    selfattention_layer_type: str = "rel_selfattn"

    def __post_init__(self) -> None:
        for name in ("input_size", "output_size", "attention_heads", "linear_units",
                     "num_blocks", "num_up_blocks", "pre_lookahead_len", "up_stride"):
            _require(int(getattr(self, name)) >= 1, f"flow encoder config: {name} must be >= 1")
        _require(self.output_size % self.attention_heads == 0,
                 f"flow encoder config: output_size {self.output_size} must be divisible by "
                 f"attention_heads {self.attention_heads}")
        # up_embed is Linear(input_size -> output_size) applied to the encoder's own output.
        _require(self.input_size == self.output_size,
                 f"flow encoder config: input_size {self.input_size} must equal output_size {self.output_size}")
        _require(float(self.up_scale_factor) == float(self.up_stride),
                 f"flow encoder config: up_scale_factor {self.up_scale_factor} must equal up_stride "
                 f"{self.up_stride} (mel frames = up_stride x token frames)")
        _require(self.normalize_before, "flow encoder config: only normalize_before=true is supported")
        _require(self.activation_type in _SUPPORTED_ACTIVATIONS,
                 f"flow encoder config: activation_type must be one of {_SUPPORTED_ACTIVATIONS}, "
                 f"got {self.activation_type!r}")
        _require(self.pos_enc_layer_type in _SUPPORTED_POS_ENC,
                 f"flow encoder config: pos_enc_layer_type must be one of {_SUPPORTED_POS_ENC}, "
                 f"got {self.pos_enc_layer_type!r}")
        _require(self.selfattention_layer_type in _SUPPORTED_SELF_ATTN,
                 f"flow encoder config: selfattention_layer_type must be one of {_SUPPORTED_SELF_ATTN}, "
                 f"got {self.selfattention_layer_type!r}")

    @property
    def head_dim(self) -> int:
        return self.output_size // self.attention_heads


@dataclass(slots=True)
class DiTConfig:
    """`DiT` estimator sizes (spec §5.6)."""

    in_channels: int = 320
    out_channels: int = 80
    hidden_size: int = 512
    depth: int = 16
    num_heads: int = 8
    head_dim: int = 64
    mlp_ratio: float = 4.0
    time_embed_dim: int = 256  # TimestepEmbedder frequency size (fixed upstream)

    def __post_init__(self) -> None:
        for name in ("in_channels", "out_channels", "hidden_size", "depth", "num_heads", "head_dim",
                     "time_embed_dim"):
            _require(int(getattr(self, name)) >= 1, f"DiT config: {name} must be >= 1")
        _require(self.mlp_ratio > 0, f"DiT config: mlp_ratio must be > 0, got {self.mlp_ratio}")
        _require(self.time_embed_dim % 2 == 0, "DiT config: time_embed_dim must be even")

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)


@dataclass(slots=True)
class FlowConfig:
    """The whole flow decoder: embedding, encoder, DiT, ODE and streaming constants."""

    input_size: int = 512
    output_size: int = 80  # mel bins
    spk_embed_dim: int = 192
    vocab_size: int = 5121  # 1024 vq02 + 1 vq02-pad + 4096 vq06
    encoder: FlowEncoderConfig = field(default_factory=FlowEncoderConfig)
    dit: DiTConfig = field(default_factory=DiTConfig)
    inference_cfg_rate: float = 0.7
    n_timesteps: int = 10
    token_mel_ratio: int = 2
    # Streaming (upstream CosyVoice_stream_impl_ defaults, spec §6).
    chunk_sizes: tuple[int, ...] = (15, 24, 48)  # token frames per chunk; the last one repeats
    stream_att_left_context: int = 96  # DiT attention-cache frames kept besides the prompt
    mel_cache_len: int = 8  # mel frames the vocoder re-runs at each chunk start

    def __post_init__(self) -> None:
        self.chunk_sizes = tuple(int(c) for c in self.chunk_sizes)
        for name in ("input_size", "output_size", "spk_embed_dim", "vocab_size", "n_timesteps",
                     "token_mel_ratio", "stream_att_left_context"):
            _require(int(getattr(self, name)) >= 1, f"flow config: {name} must be >= 1")
        _require(self.mel_cache_len >= 0, "flow config: mel_cache_len must be >= 0")
        _require(self.input_size % 2 == 0,
                 f"flow config: input_size {self.input_size} must be even (two codebooks of input_size/2)")
        _require(self.input_size == self.encoder.input_size,
                 f"flow config: input_size {self.input_size} != encoder.input_size {self.encoder.input_size}")
        _require(self.token_mel_ratio == self.encoder.up_stride,
                 f"flow config: token_mel_ratio {self.token_mel_ratio} != encoder.up_stride {self.encoder.up_stride}")
        # DiT input = channel concat of x, mu, speaker, cond (each output_size channels).
        _require(self.dit.in_channels == 4 * self.output_size,
                 f"flow config: dit.in_channels {self.dit.in_channels} must be 4 x output_size {self.output_size}")
        _require(self.dit.out_channels == self.output_size,
                 f"flow config: dit.out_channels {self.dit.out_channels} != output_size {self.output_size}")
        _require(self.inference_cfg_rate > 0,
                 f"flow config: inference_cfg_rate must be > 0 (upstream asserts), got {self.inference_cfg_rate}")
        _require(len(self.chunk_sizes) >= 1 and all(c >= 3 for c in self.chunk_sizes),
                 f"flow config: chunk_sizes must be non-empty, each >= 3 token frames, got {self.chunk_sizes}")

    # -- presets ---------------------------------------------------------------------
    @classmethod
    def full(cls) -> "FlowConfig":
        """Real CosyVoice-300M-25Hz dims (spec §5.1, §8.3)."""
        return cls()

    @classmethod
    def tiny(cls) -> "FlowConfig":
        """Small dims for the CPU `dummy:tiny` preset (same layout as the fixture weights)."""
        return cls(
            input_size=64,
            encoder=FlowEncoderConfig(input_size=64, output_size=64, attention_heads=4, linear_units=128,
                                      num_blocks=2, num_up_blocks=2),
            dit=DiTConfig(hidden_size=64, depth=2, num_heads=4, head_dim=16),
        )

    # -- parsing ---------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path) -> "FlowConfig":
        """Parse `cosyvoice.yaml` (hyperpyyaml, read without executing tags)."""
        cfg = read_yaml(path, "cosyvoice.yaml")
        flow = node(cfg, "flow", what=f"cosyvoice.yaml {path}")
        try:
            return cls.from_node(flow)
        except InvalidInputError as exc:
            raise CheckpointError(f"cosyvoice.yaml {path}: {exc}") from exc

    @classmethod
    def from_node(cls, flow: dict[str, Any]) -> "FlowConfig":
        """Build from the parsed `flow` node (tags appear as `__tag__` keys)."""
        what = "cosyvoice.yaml flow"
        enc = node(flow, "encoder", what=what)
        cfm = node(flow, "decoder", what=what)
        est = node(cfm, "estimator", what=what + ".decoder")
        emb = flow.get("input_embedding") or {}
        for key in ("vocab_size", "input_size"):
            if key in emb and key in flow and int(emb[key]) != int(flow[key]):
                raise InvalidInputError(f"{what}: input_embedding.{key} {emb[key]} != flow {key} {flow[key]}")
        return cls(
            input_size=int(flow.get("input_size", 512)),
            output_size=int(flow.get("output_size", 80)),
            spk_embed_dim=int(flow.get("spk_embed_dim", 192)),
            vocab_size=int(flow.get("vocab_size", 5121)),
            encoder=FlowEncoderConfig(**_known(FlowEncoderConfig, enc)),
            dit=DiTConfig(**_known(DiTConfig, est)),
            inference_cfg_rate=float(cfm.get("inference_cfg_rate", 0.7)),
        )


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """Keys of `data` that are fields of `cls` (drops dropout rates, tags, ...), cast to the field type."""
    out: dict[str, Any] = {}
    for f in fields(cls):
        if f.name in data and f.name != TAG_KEY:
            value = data[f.name]
            default = f.default
            if isinstance(default, bool):
                out[f.name] = bool(value)
            elif isinstance(default, int):
                out[f.name] = int(value)
            elif isinstance(default, float):
                out[f.name] = float(value)
            else:
                out[f.name] = value
    return out
