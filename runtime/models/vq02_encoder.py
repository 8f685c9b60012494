"""vq02 linguistic encoder: FunASR's streaming Paraformer encoder (`SANMEncoderChunkOpt`).

Only the encoder of the Paraformer-streaming ASR model is used: it turns 560-dim
LFR+CMVN features into 512-dim frames that k-means (see `vq02.py`) maps to codes.

Upstream never runs the encoder over a whole utterance; it drives `forward_chunk`
once per 3,840-sample audio piece (spec §3.2, corrected by §11 item 9; fixtures
README §5.10). Per call with T new frames:

1. `x = feats * sqrt(output_size) + PE`, PE a sin|cos sinusoid over the 560 input
   dims at positions counted from 1 over all frames seen so far.
2. Prepend the overlap cache (`chunk_size[0] + chunk_size[2]` = 5 rows): the last
   rows of the previous call's `[overlap ++ x]`, all zeros before the first call.
   These rows are left context; the call emits only its last T rows.
3. Every layer attends from the (5 + T)-row block to `[kv cache ++ block]` (no
   mask); its new kv cache is `[old ++ block minus its last chunk_size[2] rows]`
   keeping the last `look_back * chunk_size[1]` = 16 frames (the first call keeps
   all of its rows). The FSMN memory convolves only the current block (no cache).

The per-request state of that loop is an explicit `VQ02EncoderState`; the module
itself holds only weights whose names equal `model.pt`'s `encoder.*` keys.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError

# Call parameters of upstream's tokenizer (EX tokenizer.py `get_vq02_code`).
UPSTREAM_CHUNK_SIZE = (0, 4, 5)
UPSTREAM_ENCODER_LOOK_BACK = 4


@dataclass(slots=True)
class SANMEncoderConfig:
    """Sizes of `SANMEncoderChunkOpt` plus the streaming call parameters.

    `chunk_size` / `encoder_chunk_look_back` are not in `config.yaml`: they are the
    arguments upstream's tokenizer passes to `infer_encoder` (`[0, 4, 5]`, 4).
    `encoder_chunk_look_back` follows FunASR: > 0 keeps `look_back * chunk_size[1]`
    cached frames, -1 keeps all of them, 0 disables the kv cache.
    """

    input_size: int = 560
    output_size: int = 512
    attention_heads: int = 4
    linear_units: int = 2048
    num_blocks: int = 50
    kernel_size: int = 11
    sanm_shfit: int = 0
    layernorm_eps: float = 1e-12
    chunk_size: tuple[int, int, int] = UPSTREAM_CHUNK_SIZE
    encoder_chunk_look_back: int = UPSTREAM_ENCODER_LOOK_BACK

    def __post_init__(self) -> None:
        try:
            self.chunk_size = tuple(operator.index(c) for c in self.chunk_size)  # type: ignore[assignment]
        except TypeError as exc:
            raise InvalidInputError(f"SANMEncoderConfig.chunk_size: expected 3 ints, got {self.chunk_size!r}") from exc
        positive = ("input_size", "output_size", "attention_heads", "linear_units", "num_blocks", "kernel_size")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidInputError(f"SANMEncoderConfig.{name}: expected a positive int, got {value!r}")
        if self.input_size % 2:
            raise InvalidInputError(f"SANMEncoderConfig.input_size: the sinusoidal PE needs an even size, got {self.input_size}")
        if self.input_size < 4:
            raise InvalidInputError(f"SANMEncoderConfig.input_size: expected >= 4, got {self.input_size}")
        if self.output_size % self.attention_heads:
            raise InvalidInputError(
                f"SANMEncoderConfig.output_size {self.output_size} is not divisible by attention_heads {self.attention_heads}"
            )
        if self.kernel_size % 2 == 0:
            raise InvalidInputError(f"SANMEncoderConfig.kernel_size: expected an odd size, got {self.kernel_size}")
        if not 0 <= self.sanm_shfit <= (self.kernel_size - 1) // 2:
            raise InvalidInputError(
                f"SANMEncoderConfig.sanm_shfit: expected 0..{(self.kernel_size - 1) // 2}, got {self.sanm_shfit}"
            )
        if not self.layernorm_eps > 0:
            raise InvalidInputError(f"SANMEncoderConfig.layernorm_eps: expected > 0, got {self.layernorm_eps}")
        if len(self.chunk_size) != 3 or min(self.chunk_size) < 0 or self.chunk_size[2] < 1 or self.chunk_size[1] < 1:
            raise InvalidInputError(
                f"SANMEncoderConfig.chunk_size: expected [left, chunk, overlap] with chunk >= 1 and overlap >= 1, "
                f"got {list(self.chunk_size)}"
            )
        if self.encoder_chunk_look_back < -1:
            raise InvalidInputError(
                f"SANMEncoderConfig.encoder_chunk_look_back: expected -1, 0 or a positive int, got {self.encoder_chunk_look_back}"
            )

    # -- derived sizes ---------------------------------------------------------------
    @property
    def d_k(self) -> int:
        return self.output_size // self.attention_heads

    @property
    def overlap_rows(self) -> int:
        """Rows of the previous call prepended as left context (5 upstream)."""
        return self.chunk_size[0] + self.chunk_size[2]

    @property
    def kv_drop_rows(self) -> int:
        """Trailing rows of each block that do not enter the kv cache (5 upstream)."""
        return self.chunk_size[2]

    @property
    def kv_cache_frames(self) -> int | None:
        """Frames the kv cache keeps (16 upstream); None = unbounded, 0 = no cache."""
        if self.encoder_chunk_look_back == -1:
            return None
        return self.encoder_chunk_look_back * self.chunk_size[1]

    # -- constructors ----------------------------------------------------------------
    @classmethod
    def full(cls) -> "SANMEncoderConfig":
        """The real dengcunqin Paraformer-large streaming encoder (spec §3.2 / §8.5)."""
        return cls(input_size=560, output_size=512, attention_heads=4, linear_units=2048, num_blocks=50)

    @classmethod
    def tiny(cls) -> "SANMEncoderConfig":
        """Small dims for the fast CPU `dummy:tiny` preset (pair with random centroids of width 64)."""
        return cls(input_size=560, output_size=64, attention_heads=4, linear_units=128, num_blocks=2)

    @classmethod
    def from_funasr_config(
        cls,
        config: Mapping[str, Any],
        chunk_size: Sequence[int] = UPSTREAM_CHUNK_SIZE,
        encoder_chunk_look_back: int = UPSTREAM_ENCODER_LOOK_BACK,
    ) -> "SANMEncoderConfig":
        """Build from a parsed FunASR `config.yaml` (top-level dict with `encoder_conf`).

        `input_size` is what the front end produces: `n_mels * lfr_m` from
        `frontend_conf` (560), as FunASR derives it. Raises InvalidInputError when the
        config describes an encoder variant this module does not implement.
        """
        if not isinstance(config, Mapping) or not isinstance(config.get("encoder_conf"), Mapping):
            raise InvalidInputError("config: expected a FunASR config mapping with an 'encoder_conf' section")
        enc = config["encoder_conf"]
        encoder_name = config.get("encoder", "SANMEncoderChunkOpt")
        if encoder_name != "SANMEncoderChunkOpt":
            raise InvalidInputError(f"config.encoder: expected SANMEncoderChunkOpt, got {encoder_name!r}")
        expected = {"input_layer": "pe_online", "selfattention_layer_type": "sanm", "normalize_before": True}
        for key, want in expected.items():
            if key in enc and enc[key] != want:
                raise InvalidInputError(f"config.encoder_conf.{key}: only {want!r} is supported, got {enc[key]!r}")
        if enc.get("concat_after", False) or enc.get("positionwise_layer_type", "linear") != "linear":
            raise InvalidInputError("config.encoder_conf: concat_after / non-linear positionwise layers are not supported")
        front = config.get("frontend_conf") or {}
        input_size = int(front.get("n_mels", 80)) * int(front.get("lfr_m", 7))
        try:
            return cls(
                input_size=input_size,
                output_size=int(enc["output_size"]),
                attention_heads=int(enc["attention_heads"]),
                linear_units=int(enc["linear_units"]),
                num_blocks=int(enc["num_blocks"]),
                kernel_size=int(enc.get("kernel_size", 11)),
                sanm_shfit=int(enc.get("sanm_shfit", 0)),
                chunk_size=tuple(chunk_size),  # type: ignore[arg-type]
                encoder_chunk_look_back=int(encoder_chunk_look_back),
            )
        except KeyError as exc:
            raise InvalidInputError(f"config.encoder_conf: missing key {exc.args[0]!r}") from exc


@dataclass(slots=True, frozen=True)
class VQ02EncoderState:
    """Per-request streaming state of `SANMStreamingEncoder` (never stored on the module).

    overlap:   [B, overlap_rows, input_size] post-scale/PE input rows of the previous
               call (zeros before the first call).
    position:  frames encoded so far; the next call's PE positions start at position + 1.
    kv:        per layer (keys, values), each [B, heads, L, d_k]; None before a layer's
               first call (upstream then keeps the first block's rows untruncated).
    """

    overlap: torch.Tensor
    position: int
    kv: tuple[tuple[torch.Tensor, torch.Tensor] | None, ...]

    @property
    def batch(self) -> int:
        return self.overlap.shape[0]


# -- building blocks ------------------------------------------------------------------
def _layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """LayerNorm computed in fp32 (eps 1e-12 is below fp16/bf16 resolution), cast back."""
    if x.dtype in (torch.float32, torch.float64):
        return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    y = F.layer_norm(x.float(), norm.normalized_shape, norm.weight.float(), norm.bias.float(), norm.eps)
    return y.to(x.dtype)


def sinusoid_position_encoding(start: int, length: int, depth: int, device: torch.device | str) -> torch.Tensor:
    """FunASR `StreamSinusoidalPositionEncoder` rows for positions start+1 .. start+length.

    Returns [length, depth] float32 = [sin(p * inv), cos(p * inv)] (halves, not
    interleaved), inv_j = exp(-j * ln(10000) / (depth/2 - 1)). Computed in float32
    exactly as upstream does, whatever the model dtype, so positions stay exact.
    """
    half = depth // 2
    increment = torch.log(torch.tensor(10000.0, dtype=torch.float32, device=device)) / (half - 1)
    inv = torch.exp(torch.arange(half, dtype=torch.float32, device=device) * -increment)  # [half]
    pos = torch.arange(start + 1, start + length + 1, dtype=torch.float32, device=device)  # [length]
    angle = pos[:, None] * inv[None, :]  # [length, half]
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)


class FeedForward(nn.Module):
    """`PositionwiseFeedForward`: w_2(relu(w_1(x)))."""

    def __init__(self, size: int, hidden: int) -> None:
        super().__init__()
        self.w_1 = nn.Linear(size, hidden)
        self.w_2 = nn.Linear(hidden, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(F.relu(self.w_1(x)))


class SANMAttention(nn.Module):
    """`MultiHeadedAttentionSANM` in streaming (`forward_chunk`) mode.

    Attention over [kv cache ++ block] plus an FSMN memory (depthwise conv over the
    block's values, no cache) added to the projected attention output.
    """

    def __init__(self, in_size: int, size: int, heads: int, kernel_size: int, sanm_shfit: int) -> None:
        super().__init__()
        self.heads = heads
        self.d_k = size // heads
        self.linear_out = nn.Linear(size, size)
        self.linear_q_k_v = nn.Linear(in_size, 3 * size)
        self.fsmn_block = nn.Conv1d(size, size, kernel_size, groups=size, bias=False)
        left = (kernel_size - 1) // 2 + sanm_shfit
        self.fsmn_padding = (left, kernel_size - 1 - left)

    def fsmn_memory(self, v: torch.Tensor) -> torch.Tensor:
        """v: [B, T, D] -> depthwise_conv(v) + v: [B, T, D] (zero padded, no cache)."""
        x = F.pad(v.transpose(1, 2), self.fsmn_padding)  # [B, D, T + k - 1]
        x = F.conv1d(x, self.fsmn_block.weight, groups=self.fsmn_block.groups)  # [B, D, T]
        return x.transpose(1, 2) + v

    def forward(
        self,
        x: torch.Tensor,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
        cfg: SANMEncoderConfig,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """x: [B, R, in] (R = overlap + T) -> ([B, R, D], new cache ([B, H, L, d_k] x 2) or None)."""
        b, r, _ = x.shape
        q, k, v = self.linear_q_k_v(x).split(self.heads * self.d_k, dim=-1)  # each [B, R, D]
        q_h, k_h, v_h = (t.reshape(b, r, self.heads, self.d_k).transpose(1, 2) for t in (q, k, v))  # [B, H, R, d_k]
        new_cache = self._next_kv_cache(cache, k_h, v_h, cfg)
        if cache is not None:
            k_h = torch.cat([cache[0], k_h], dim=2)  # [B, H, L + R, d_k]
            v_h = torch.cat([cache[1], v_h], dim=2)
        attn = self._attend(q_h, k_h, v_h)  # [B, H, R, d_k]
        attn = attn.transpose(1, 2).reshape(b, r, self.heads * self.d_k)  # [B, R, D]
        return self.linear_out(attn) + self.fsmn_memory(v), new_cache

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Unmasked softmax(q k^T / sqrt(d_k)) v; upstream scales q before the product."""
        q = q * (self.d_k ** -0.5)
        return F.scaled_dot_product_attention(q, k, v, scale=1.0)

    @staticmethod
    def _next_kv_cache(
        cache: tuple[torch.Tensor, torch.Tensor] | None,
        k_h: torch.Tensor,
        v_h: torch.Tensor,
        cfg: SANMEncoderConfig,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """[old ++ block minus its last kv_drop_rows], keeping the last kv_cache_frames.

        As upstream, the very first block is cached untruncated, and the trailing
        rows are dropped because the next call sees them again as overlap rows.
        """
        keep_frames = cfg.kv_cache_frames
        if keep_frames == 0:
            return None
        stride = k_h.shape[2] - cfg.kv_drop_rows
        k_new, v_new = k_h[:, :, :stride], v_h[:, :, :stride]
        if cache is None:
            return k_new, v_new
        k_all = torch.cat([cache[0], k_new], dim=2)
        v_all = torch.cat([cache[1], v_new], dim=2)
        if keep_frames is not None:
            k_all, v_all = k_all[:, :, -keep_frames:], v_all[:, :, -keep_frames:]
        return k_all, v_all


class SANMEncoderLayer(nn.Module):
    """`EncoderLayerSANM` (pre-LN); the attention residual exists only when in == out size."""

    def __init__(self, in_size: int, cfg: SANMEncoderConfig) -> None:
        super().__init__()
        size = cfg.output_size
        self.self_attn = SANMAttention(in_size, size, cfg.attention_heads, cfg.kernel_size, cfg.sanm_shfit)
        self.feed_forward = FeedForward(size, cfg.linear_units)
        self.norm1 = nn.LayerNorm(in_size, eps=cfg.layernorm_eps)
        self.norm2 = nn.LayerNorm(size, eps=cfg.layernorm_eps)
        self.has_attention_residual = in_size == size

    def forward(
        self,
        x: torch.Tensor,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
        cfg: SANMEncoderConfig,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """x: [B, R, in] -> ([B, R, D], new kv cache)."""
        a, new_cache = self.self_attn(_layer_norm(x, self.norm1), cache, cfg)
        h = x + a if self.has_attention_residual else a  # [B, R, D]
        h = h + self.feed_forward(_layer_norm(h, self.norm2))
        return h, new_cache


class SANMStreamingEncoder(nn.Module):
    """`SANMEncoderChunkOpt` driven the way upstream's vq02 tokenizer drives it.

    Parameter names equal `model.pt`'s `encoder.*` keys without the `encoder.`
    prefix: `encoders0.0.*` (input_size -> output_size), `encoders.N.*`, `after_norm.*`.
    """

    def __init__(self, cfg: SANMEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoders0 = nn.ModuleList([SANMEncoderLayer(cfg.input_size, cfg)])
        self.encoders = nn.ModuleList([SANMEncoderLayer(cfg.output_size, cfg) for _ in range(cfg.num_blocks - 1)])
        self.after_norm = nn.LayerNorm(cfg.output_size, eps=cfg.layernorm_eps)

    @property
    def layers(self) -> list[SANMEncoderLayer]:
        return [*self.encoders0, *self.encoders]

    def _param_dtype(self) -> torch.dtype:
        return self.after_norm.weight.dtype

    def init_state(
        self, batch: int = 1, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> VQ02EncoderState:
        """Fresh state: zero overlap rows [B, overlap_rows, input_size], position 0, no kv cache."""
        if not isinstance(batch, int) or batch < 1:
            raise InvalidInputError(f"batch: expected a positive int, got {batch!r}")
        device = self.after_norm.weight.device if device is None else device
        dtype = self._param_dtype() if dtype is None else dtype
        overlap = torch.zeros(batch, self.cfg.overlap_rows, self.cfg.input_size, device=device, dtype=dtype)
        return VQ02EncoderState(overlap=overlap, position=0, kv=(None,) * len(self.layers))

    def embed(self, feats_chunk: torch.Tensor, position: int) -> torch.Tensor:
        """feats [B, T, input] -> feats * sqrt(output_size) + PE, in float32 as upstream, cast to the model dtype."""
        t = feats_chunk.shape[1]
        pe = sinusoid_position_encoding(position, t, self.cfg.input_size, feats_chunk.device)  # [T, input]
        x = feats_chunk.float() * (self.cfg.output_size ** 0.5) + pe
        return x.to(self._param_dtype())

    @torch.no_grad()
    def forward_chunk(
        self, feats_chunk: torch.Tensor, state: VQ02EncoderState
    ) -> tuple[torch.Tensor, VQ02EncoderState]:
        """One upstream `forward_chunk` call.

        feats_chunk: [B, T, input_size] new LFR+CMVN frames (T >= 1).
        Returns (out [B, T, output_size] for exactly those frames, the next state).
        `state` is not modified.
        """
        self._check_chunk(feats_chunk, state)
        x = self.embed(feats_chunk, state.position)  # [B, T, input]
        block = torch.cat([state.overlap.to(x.dtype), x], dim=1)  # [B, R, input], R = overlap + T
        overlap = block[:, -self.cfg.overlap_rows:]
        h = block
        new_kv = []
        for layer, cache in zip(self.layers, state.kv):
            h, cache = layer(h, cache, self.cfg)
            new_kv.append(cache)
        t = feats_chunk.shape[1]
        out = _layer_norm(h[:, -t:], self.after_norm)  # [B, T, D]
        next_state = VQ02EncoderState(overlap=overlap, position=state.position + t, kv=tuple(new_kv))
        return out, next_state

    @torch.no_grad()
    def encode(self, feats: torch.Tensor, chunk_lengths: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Whole-utterance vq02 encoding with upstream's streaming semantics (fresh state).

        feats: [B, N, input_size]; chunk_lengths: frames per upstream call (4 per
        3,840-sample piece, the last one fewer), positive, summing to N.
        Returns [B, N, output_size]. B > 1 means B equal-length utterances.
        Runs all calls layer by layer (`vq02_layerwise`); `encode_chunked` is the call-by-call
        reference. When an export backend has replaced `forward_chunk` on this instance
        (`editx.export.backends.method_view`), the calls go through that graph one by one.
        """
        from .vq02_layerwise import encode_layerwise  # imports this module

        lengths = self._checked_lengths(feats, chunk_lengths)
        if "forward_chunk" in vars(self):
            return self.encode_chunked(feats, lengths)
        self._check_frames(feats)
        return encode_layerwise(self, feats, lengths)

    @torch.no_grad()
    def encode_chunked(self, feats: torch.Tensor, chunk_lengths: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """`encode` through upstream's call-by-call loop (`forward_chunk` per call): the reference."""
        lengths = self._checked_lengths(feats, chunk_lengths)
        state = self.init_state(feats.shape[0], feats.device)
        outs = []
        start = 0
        for length in lengths:
            out, state = self.forward_chunk(feats[:, start:start + length], state)
            outs.append(out)
            start += length
        return torch.cat(outs, dim=1)

    def _checked_lengths(self, feats: torch.Tensor, chunk_lengths: Sequence[int] | torch.Tensor) -> list[int]:
        if not isinstance(feats, torch.Tensor) or feats.dim() != 3:
            raise InvalidInputError(f"feats: expected a [B, N, {self.cfg.input_size}] tensor, got {_describe(feats)}")
        return _chunk_length_list(chunk_lengths, feats.shape[1])

    def _check_chunk(self, feats_chunk: torch.Tensor, state: VQ02EncoderState) -> None:
        self._check_frames(feats_chunk)
        if not isinstance(state, VQ02EncoderState) or len(state.kv) != len(self.layers):
            raise InvalidInputError("state: expected a VQ02EncoderState from this encoder's init_state()")
        if state.batch != feats_chunk.shape[0]:
            raise InvalidInputError(f"feats_chunk: batch {feats_chunk.shape[0]} does not match the state's batch "
                                    f"{state.batch}")

    def _check_frames(self, feats_chunk: torch.Tensor) -> None:
        if not isinstance(feats_chunk, torch.Tensor) or feats_chunk.dim() != 3:
            raise InvalidInputError(
                f"feats_chunk: expected a [B, T, {self.cfg.input_size}] tensor, got {_describe(feats_chunk)}"
            )
        _, t, c = feats_chunk.shape
        if c != self.cfg.input_size:
            raise InvalidInputError(f"feats_chunk: expected {self.cfg.input_size} features per frame, got {c}")
        if t < 1:
            raise InvalidInputError("feats_chunk: expected at least one frame, got 0")
        if not torch.is_floating_point(feats_chunk):
            raise InvalidInputError(f"feats_chunk: expected a floating-point tensor, got {feats_chunk.dtype}")


def _describe(x: Any) -> str:
    return f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__


def _chunk_length_list(chunk_lengths: Sequence[int] | torch.Tensor, total: int) -> list[int]:
    """Validate chunk_lengths (positive ints summing to `total`) and return them as a list."""
    if isinstance(chunk_lengths, torch.Tensor):
        if chunk_lengths.dim() != 1 or torch.is_floating_point(chunk_lengths):
            raise InvalidInputError(f"chunk_lengths: expected a 1-D integer tensor, got {chunk_lengths.dtype} {_describe(chunk_lengths)}")
        lengths = [int(v) for v in chunk_lengths.tolist()]
    else:
        try:
            if isinstance(chunk_lengths, (str, bytes)):
                raise TypeError("a string")
            # operator.index refuses floats/strings instead of silently truncating them.
            lengths = [operator.index(v) for v in chunk_lengths]
        except TypeError as exc:
            raise InvalidInputError(f"chunk_lengths: expected a sequence of ints, got {chunk_lengths!r}") from exc
    if not lengths or min(lengths) < 1:
        raise InvalidInputError(f"chunk_lengths: expected one or more positive frame counts, got {lengths}")
    if sum(lengths) != total:
        raise InvalidInputError(f"chunk_lengths: sum {sum(lengths)} does not match the {total} frames of feats")
    return lengths

