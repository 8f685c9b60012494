"""Step1, the 3.5 B audio LLM (upstream `Step1ForCausalLM`, spec §4.1–4.2, fixtures §5.3).

A pre-norm decoder with grouped-query attention whose only position signal is a
square-root ALiBi bias `−slope_h · sqrt(i − j)`; RMSNorm with an fp32 variance; SwiGLU
MLP; no biases; untied `lm_head`. Parameter names equal upstream's checkpoint keys.

Two forward paths:
* `forward(input_ids, cache, positions, ...)` — the engine path. New tokens are
  written into a preallocated static KV cache ([layers, B, kv_heads, S, head_dim],
  owned by the caller) at per-row positions, and attention runs over a fixed number of
  cache slots with the bias computed from the positions. With T = 1 it has no host
  synchronisation and no data-dependent shapes, so it can be captured in a CUDA graph.
* `forward_reference(input_ids)` — upstream's math verbatim: a full causal forward with
  the materialised [H, T, T] bias and repeat-interleaved K/V. For tests.

Attention (bias computed in-kernel, GQA without repeating K/V), RMSNorm (fused with the residual
add before it) and the SwiGLU gate dispatch through `editx.layers`: Triton kernels on CUDA, the
PyTorch references elsewhere (`editx.layers.set_kernel_backend` forces either).

`fuse_projections()` (called by the loaders) runs q|k|v and gate|up as one GEMM each, 4 GEMMs per
layer instead of 7, for `forward` and `forward_paged`; the parameters stay upstream's, as views of
the fused weights (`editx.models.fused_projections`). `forward_reference` never uses them.
"""
from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, InvalidInputError
from ..layers.activations import swiglu
from ..layers.attention import alibi_uses_triton, cached_alibi_attention, paged_alibi_attention
from ..layers.norms import add_rms_norm, rms_norm
from ..loading.state_dict import load_checked, read_safetensors_dir, require_file
from .fused_projections import FusedProjections
from .graph_safety import cpu_only_host_reads

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# =======================================================================================
# Config
# =======================================================================================
@dataclass(slots=True)
class Step1Config:
    """Step1 hyper-parameters (HF `config.json` of the Step-Audio-EditX model dir)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_attention_groups: int  # KV heads; query head h uses group h // (heads // groups)
    vocab_size: int
    rms_norm_eps: float = 1e-5
    max_seq_len: int = 32768
    bos_token_id: int = 1
    eos_token_id: int = 3
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_attention_groups", "vocab_size", "max_seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InvalidInputError(f"Step1Config.{name}: expected a positive int, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise InvalidInputError(
                f"Step1Config.hidden_size: {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_attention_groups:
            raise InvalidInputError(
                f"Step1Config.num_attention_groups: {self.num_attention_groups} does not divide "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if not (isinstance(self.rms_norm_eps, (int, float)) and self.rms_norm_eps > 0):
            raise InvalidInputError(f"Step1Config.rms_norm_eps: expected a positive float, got {self.rms_norm_eps!r}")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < self.vocab_size:
                raise InvalidInputError(f"Step1Config.{name}: expected an id in [0, {self.vocab_size}), got {value!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def heads_per_group(self) -> int:
        return self.num_attention_heads // self.num_attention_groups

    @classmethod
    def full(cls) -> Step1Config:
        """The real Step-Audio-EditX LLM (spec §4.1): 3.53 B parameters."""
        return cls(hidden_size=3072, intermediate_size=8192, num_hidden_layers=32, num_attention_heads=48,
                   num_attention_groups=4, vocab_size=74752, rms_norm_eps=1e-5, max_seq_len=32768)

    @classmethod
    def tiny(cls) -> Step1Config:
        """A small model for the CPU "dummy:tiny" preset; the vocabulary stays 74752 so the
        real tokenizer's `<audio_K>` ids exist."""
        return cls(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                   num_attention_groups=2, vocab_size=74752, rms_norm_eps=1e-5, max_seq_len=32768)

    @classmethod
    def from_hf_dict(cls, cfg: Mapping[str, Any], source: str = "config.json") -> Step1Config:
        """Parse an HF `config.json` dict (model_type "step1")."""
        model_type = cfg.get("model_type", "step1")
        if model_type != "step1":
            raise CheckpointError(f"{source}: model_type is {model_type!r}, expected 'step1'")
        required = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_attention_groups", "vocab_size")
        missing = [k for k in required if k not in cfg]
        if missing:
            raise CheckpointError(f"{source}: missing keys {missing}")
        optional = {k: cfg[k] for k in ("rms_norm_eps", "max_seq_len", "bos_token_id", "eos_token_id",
                                        "pad_token_id") if cfg.get(k) is not None}
        try:
            return cls(**{k: cfg[k] for k in required}, **optional)
        except InvalidInputError as exc:
            raise CheckpointError(f"{source}: {exc}") from exc

    @classmethod
    def from_json(cls, path: str | Path) -> Step1Config:
        """Read an HF `config.json` file."""
        p = require_file(path, "Step1 config.json")
        try:
            cfg = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot parse {p}: {exc}") from exc
        if not isinstance(cfg, dict):
            raise CheckpointError(f"{p}: expected a JSON object")
        return cls.from_hf_dict(cfg, source=str(p))


# =======================================================================================
# sqrt-ALiBi
# =======================================================================================
def alibi_slopes(num_heads: int) -> torch.Tensor:
    """Per-head ALiBi slopes [H] (fp32, CPU), upstream's `build_alibi_cache` rule for any H.

    With n = the largest power of two ≤ H: heads 0..n−1 get 2^(−8k/n), k = 1..n; the
    remaining H − n heads get 2^(−4k/n) for odd k = 1, 3, ... (the in-between slopes of
    a 2n-head model). Evaluated with the same fp32 torch ops as upstream so the values
    are bit-identical.
    """
    n = 2 ** math.floor(math.log2(num_heads))
    cpu = torch.device("cpu")  # explicit: models are built under a meta-device context
    slopes = torch.pow(2.0 ** (-8.0 / n), torch.arange(1, n + 1, device=cpu))
    if n < num_heads:
        extra = torch.pow(2.0 ** (-4.0 / n), torch.arange(1, 1 + 2 * (num_heads - n), 2, device=cpu))
        slopes = torch.cat([slopes, extra])
    return slopes.float()


def alibi_bias_for_positions(
    slopes: torch.Tensor, query_pos: torch.Tensor, key_len: int, dtype: torch.dtype
) -> torch.Tensor:
    """Bias [B, H, T, K] for queries at absolute positions `query_pos` [B, T] over keys 0..K−1.

    bias = −slope_h · sqrt(q − j) for j ≤ q, −inf for j > q (later keys, including stale
    cache slots). Computed in fp32 like upstream, then cast to the activation dtype
    (upstream casts its bias to the query dtype, e.g. bf16).
    """
    keys = torch.arange(key_len, device=query_pos.device)
    dist = query_pos[:, :, None] - keys  # [B, T, K]
    root = torch.sqrt(dist.clamp(min=0).float())
    bias = -(root[:, None] * slopes.view(1, -1, 1, 1))  # [B, H, T, K]
    bias = bias.masked_fill((dist < 0)[:, None], float("-inf"))
    return bias.to(dtype)


def alibi_bias_reference(slopes: torch.Tensor, key_len: int, query_len: int, dtype: torch.dtype) -> torch.Tensor:
    """Upstream's materialised bias [1, H, T, K]: the last T rows of the causal K × K matrix."""
    rows = torch.arange(key_len, device=slopes.device).view(-1, 1)  # query index i
    cols = torch.arange(key_len, device=slopes.device).view(1, -1)  # key index j
    bias = -torch.sqrt((rows - cols).float()) * slopes.view(-1, 1, 1)  # NaN above the diagonal ...
    bias = bias.masked_fill(cols > rows, float("-inf"))  # ... replaced by -inf
    return bias[None, :, key_len - query_len:, :].to(dtype)


# =======================================================================================
# Layers
# =======================================================================================
class Step1RMSNorm(nn.Module):
    """RMSNorm: variance in fp32, `x * rsqrt(var + eps)` (rsqrt cast to x's dtype), then `* weight`."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., C]; Triton kernel on CUDA (editx.layers.norms)
        return rms_norm(x, self.weight, self.eps)


class Step1MLP(FusedProjections):
    """SwiGLU: down(silu(gate(x)) * up(x)); gate|up run as one [2·I, C] GEMM once fused."""

    fused_names = ("gate_proj", "up_proj")

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor, fused: bool = True) -> torch.Tensor:
        """x [..., C] -> [..., C]; fused=False runs upstream's two GEMMs even when fused."""
        weight = self.fused_weight() if fused else None
        if weight is None:
            return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))
        # [..., 2·I] -> gate, up [..., I]: views with row stride 2·I (the swiglu kernel takes strided rows)
        gate, up = F.linear(x, weight).split_with_sizes(self.fused_sizes, dim=-1)
        return self.down_proj(swiglu(gate, up))


class Step1Attention(FusedProjections):
    """Grouped-query attention with an additive sqrt-ALiBi bias (no rotary, no other positions);
    q|k|v run as one [H·D + 2·G·D, C] GEMM once fused."""

    fused_names = ("q_proj", "k_proj", "v_proj")

    def __init__(self, config: Step1Config) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_groups = config.num_attention_groups
        self.head_dim = config.head_dim
        kv_dim = self.num_groups * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, kv_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, kv_dim, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def _project(self, x: torch.Tensor, fused: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # x: [B, T, C] -> q: [B, H, T, D], k/v: [B, G, T, D] (rows D·g .. D·g+D−1 of k_proj = group g)
        b, t, _ = x.shape
        weight = self.fused_weight() if fused else None
        if weight is None:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        else:
            # one GEMM [B, T, H·D + 2·G·D], split into views (row stride H·D + 2·G·D; the attention
            # kernels and the cache writes take strided rows)
            q, k, v = F.linear(x, weight).split_with_sizes(self.fused_sizes, dim=-1)
        q = q.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.num_groups, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.num_groups, self.head_dim).transpose(1, 2)
        return q, k, v

    def _output(self, attn: torch.Tensor) -> torch.Tensor:
        # attn: [B, H, T, D] -> [B, T, C]
        b, _, t, _ = attn.shape
        return self.o_proj(attn.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))

    def forward_cached(
        self,
        x: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        batch_index: torch.Tensor,
        write_pos: torch.Tensor,
        bias: torch.Tensor | None,
        slopes: torch.Tensor | None = None,
        key_len: int | None = None,
    ) -> torch.Tensor:
        """Write this step's K/V into the layer cache, then attend over its first K slots.

        x: [B, T, C]; k_cache/v_cache: [B, G, S, D] (one layer of the static cache);
        batch_index: [B, 1]; write_pos: [B, T] absolute positions of the new tokens;
        bias: [B, H, T, K] (K ≤ S) for the reference attention, or None to run the Triton
        kernel, which computes the bias from `slopes` [H] over `key_len` = K slots. Returns [B, T, C].
        """
        q, k, v = self._project(x)
        # Advanced indices around a slice: k_cache[b, :, p] addresses [B, T, G, D].
        k_cache[batch_index, :, write_pos] = k.transpose(1, 2)
        v_cache[batch_index, :, write_pos] = v.transpose(1, 2)
        b, _, t, d = q.shape
        key_len = bias.shape[-1] if bias is not None else key_len
        attn = cached_alibi_attention(q.transpose(1, 2), k_cache, v_cache, write_pos, key_len, slopes, bias,
                                      backend="reference" if bias is not None else "triton")  # [B, T, H, D]
        return self.o_proj(attn.reshape(b, t, self.num_heads * d))

    def forward_paged(self, x: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, batch,
                      slopes: torch.Tensor, backend: str) -> torch.Tensor:
        """Packed tokens over the paged KV pool.

        x: [N, C] (all scheduled sequences' new tokens); k_pool/v_pool: [num_blocks, block_size, G, D]
        (one layer); batch: a `PagedBatch`. The new K/V are written at batch.slot_mapping first.
        Returns [N, C].
        """
        n = x.shape[0]
        q, k, v = self._project(x[None])  # q [1, H, N, D]; k/v [1, G, N, D]
        groups, dim = self.num_groups, self.head_dim
        k_pool.view(-1, groups, dim)[batch.slot_mapping] = k[0].transpose(0, 1)
        v_pool.view(-1, groups, dim)[batch.slot_mapping] = v[0].transpose(0, 1)
        out = paged_alibi_attention(q[0].transpose(0, 1), k_pool, v_pool, batch, slopes, backend)  # [N, H, D]
        return self.o_proj(out.reshape(n, self.num_heads * dim))

    def forward_reference(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Upstream's SDPA fallback path: repeat-interleaved K/V, materialised bias [1, H, T, T]."""
        q, k, v = self._project(x, fused=False)  # upstream's three GEMMs: see Step1Model.forward_reference
        repeat = self.num_heads // self.num_groups
        k = k.repeat_interleave(repeat, dim=1)
        v = v.repeat_interleave(repeat, dim=1)
        return self._output(F.scaled_dot_product_attention(q, k, v, attn_mask=bias))


class Step1DecoderLayer(nn.Module):
    """Pre-norm block: h = x + attn(norm(x)); out = h + mlp(norm(h))."""

    def __init__(self, config: Step1Config) -> None:
        super().__init__()
        self.self_attn = Step1Attention(config)
        self.mlp = Step1MLP(config.hidden_size, config.intermediate_size)
        self.input_layernorm = Step1RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = Step1RMSNorm(config.hidden_size, config.rms_norm_eps)

    def _mlp_block(self, h: torch.Tensor, fused: bool = True) -> torch.Tensor:
        return h + self.mlp(self.post_attention_layernorm(h), fused)

    def _residual_mlp_block(self, x: torch.Tensor, attn: torch.Tensor, fused: bool = True) -> torch.Tensor:
        # `_mlp_block(x + attn)` with the add and the RMSNorm in one pass (fused on CUDA)
        norm = self.post_attention_layernorm
        y, h = add_rms_norm(x, attn, norm.weight, norm.eps)
        return h + self.mlp(y, fused)

    def forward_cached(self, x: torch.Tensor, k_cache, v_cache, batch_index, write_pos, bias, slopes=None,
                       key_len=None) -> torch.Tensor:
        attn = self.self_attn.forward_cached(self.input_layernorm(x), k_cache, v_cache, batch_index, write_pos, bias,
                                             slopes, key_len)
        return self._residual_mlp_block(x, attn)

    def forward_reference(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        attn = self.self_attn.forward_reference(self.input_layernorm(x), bias)
        return self._residual_mlp_block(x, attn, fused=False)

    def forward_paged(self, x: torch.Tensor, k_pool, v_pool, batch, slopes, backend: str) -> torch.Tensor:
        return self._residual_mlp_block(x, self.self_attn.forward_paged(self.input_layernorm(x), k_pool, v_pool, batch,
                                                                        slopes, backend))


class Step1Backbone(nn.Module):
    """Embedding, decoder layers and final norm (the `model.` prefix of the checkpoint)."""

    def __init__(self, config: Step1Config) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Step1DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = Step1RMSNorm(config.hidden_size, config.rms_norm_eps)


class KVStore(Protocol):
    """What `Step1Model.forward` needs of a cache (see `editx.engine.kv_cache.KVCache`)."""

    k: torch.Tensor  # [L, B, G, S, D]
    v: torch.Tensor  # [L, B, G, S, D]


# =======================================================================================
# Model
# =======================================================================================
class Step1Model(nn.Module):
    """Step1ForCausalLM with upstream's parameter names (`model.*`, `lm_head.weight`)."""

    def __init__(self, config: Step1Config) -> None:
        super().__init__()
        self.config = config
        self.model = Step1Backbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        # Slopes are constants, kept out of the state dict and out of `.to(dtype)` (which
        # would round them to bf16): fp32, one copy per device, made on first use.
        self._slopes_cpu = alibi_slopes(config.num_attention_heads)
        self._slopes_by_device: dict[torch.device, torch.Tensor] = {}

    # -- helpers -------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    def fuse_projections(self) -> Step1Model:
        """Run every layer's q|k|v and gate|up as one GEMM each (`editx.models.fused_projections`):
        same parameter names and state dict, no extra memory. Idempotent; the loaders call it once the
        model has its final device and dtype. Returns self."""
        for module in self._fusable():
            module.fuse_projections()
        return self

    def unfuse_projections(self) -> Step1Model:
        """Back to upstream's seven GEMMs per layer (one storage per projection). Returns self."""
        for module in self._fusable():
            module.unfuse_projections()
        return self

    @property
    def projections_fused(self) -> bool:
        """True when every layer's projections run fused (False after unfusing or a detected change)."""
        return all(module.projections_fused for module in self._fusable())

    def _fusable(self) -> list[FusedProjections]:
        return [m for m in self.modules() if isinstance(m, FusedProjections)]

    def slopes(self, device: torch.device) -> torch.Tensor:
        """fp32 ALiBi slopes [H] on `device` (copied once per device, before any graph capture)."""
        device = torch.device(device)
        cached = self._slopes_by_device.get(device)
        if cached is None:
            cached = self._slopes_cpu.to(device)
            self._slopes_by_device[device] = cached
        return cached

    def _check_ids(self, input_ids: torch.Tensor) -> None:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
            raise InvalidInputError(f"input_ids: expected an integer tensor [B, T], got {_describe(input_ids)}")
        if input_ids.shape[1] == 0:
            raise InvalidInputError("input_ids: expected at least one token per row")
        # Value checks would need a device sync; do them only where they are free (CPU).
        if input_ids.device.type == "cpu" and input_ids.numel():
            with cpu_only_host_reads():
                lo, hi = int(input_ids.min()), int(input_ids.max())
            if lo < 0 or hi >= self.config.vocab_size:
                raise InvalidInputError(f"input_ids: ids must lie in [0, {self.config.vocab_size}), got {lo}..{hi}")

    def _check_cache(self, cache: KVStore, batch: int) -> None:
        cfg = self.config
        want = (cfg.num_hidden_layers, batch, cfg.num_attention_groups, cfg.head_dim)
        for name in ("k", "v"):
            t = getattr(cache, name, None)
            if not isinstance(t, torch.Tensor) or t.dim() != 5:
                raise InvalidInputError(f"cache.{name}: expected a tensor [L, B, G, S, D], got {_describe(t)}")
            got = (t.shape[0], t.shape[1], t.shape[2], t.shape[4])
            if got != want:
                raise InvalidInputError(
                    f"cache.{name}: shape {tuple(t.shape)} does not fit (layers, batch, kv_heads, ·, head_dim) = {want}"
                )
            if t.dtype != self.dtype or t.device != self.device:
                raise InvalidInputError(
                    f"cache.{name}: {t.dtype} on {t.device}, expected the model's {self.dtype} on {self.device}"
                )

    def _logits(self, hidden: torch.Tensor, logits_at: torch.Tensor | None) -> torch.Tensor:
        # hidden: [B, T, C] (after the final norm)
        if logits_at is None:
            return self.lm_head(hidden)  # [B, T, V]
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return self.lm_head(hidden[rows, logits_at])  # [B, V]

    # -- engine path ---------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        cache: KVStore,
        positions: torch.Tensor,
        *,
        attend_len: int | None = None,
        logits_at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run T new tokens per row against the static KV cache, appending their K/V.

        input_ids: [B, T] int64; row b's tokens go to positions positions[b] .. positions[b]+T−1.
        cache: `.k`/`.v` [L, B, G, S, D] in the model's dtype/device; written in place.
        positions: [B] int64 on the model's device (no host sync: it stays a tensor).
        attend_len: number K of cache slots attention reads (static; default S). It must
            exceed every position written in this call; slots beyond a query's own
            position are masked, so stale or padded entries there never leak in.
        logits_at: optional [B] int64 index t per row: return only those rows' logits
            [B, V] (skips the lm_head GEMM for the rest of a prefill).
        Returns logits [B, T, V] (or [B, V]) in the model's dtype.
        """
        self._check_ids(input_ids)
        batch, steps = input_ids.shape
        self._check_cache(cache, batch)
        capacity = cache.k.shape[3]
        key_len = capacity if attend_len is None else int(attend_len)
        if not 0 < key_len <= capacity:
            raise InvalidInputError(f"attend_len: expected 1..{capacity} (cache capacity), got {attend_len}")
        if not isinstance(positions, torch.Tensor) or tuple(positions.shape) != (batch,):
            raise InvalidInputError(f"positions: expected an int64 tensor [{batch}], got {_describe(positions)}")
        device = self.device
        positions = positions.to(device=device, dtype=torch.long)
        write_pos = positions[:, None] + torch.arange(steps, device=device)  # [B, T]
        batch_index = torch.arange(batch, device=device)[:, None]  # [B, 1]
        slopes = self.slopes(device)
        # The Triton kernel computes the bias itself; the reference needs it materialised (once, all layers).
        use_kernel = alibi_uses_triton(device, self.config.head_dim)
        bias = None if use_kernel else alibi_bias_for_positions(slopes, write_pos, key_len, self.dtype)

        h = self.model.embed_tokens(input_ids.to(device))  # [B, T, C]
        for i, layer in enumerate(self.model.layers):
            h = layer.forward_cached(h, cache.k[i], cache.v[i], batch_index, write_pos, bias, slopes, key_len)
        return self._logits(self.model.norm(h), logits_at)

    # -- continuous-batching path ----------------------------------------------------------
    def forward_paged(self, batch, cache, attention_backend: str = "auto",
                      vocab_ranges: Sequence[tuple[int, int]] | None = None) -> torch.Tensor:
        """Run one packed step (prefill chunks and decode tokens of many sequences) over a paged pool.

        batch: `editx.engine.paged_kv.PagedBatch` (N new tokens of S sequences); cache: `PagedKVCache`
        (`.k`/`.v` [L, num_blocks, block_size, G, D], written in place). Returns the logits of each
        sequence's last new token, [S, V] in the model dtype; with vocab_ranges ([start, end) id ranges)
        only those ids' logits, [S, n] (see `logits_for_ranges`).
        """
        if batch.input_ids.dim() != 1:
            raise InvalidInputError(f"batch.input_ids: expected [N], got {tuple(batch.input_ids.shape)}")
        slopes = self.slopes(self.device)
        h = self.model.embed_tokens(batch.input_ids.to(self.device))  # [N, C]
        for i, layer in enumerate(self.model.layers):
            h = layer.forward_paged(h, cache.k[i], cache.v[i], batch, slopes, attention_backend)
        hidden = self.model.norm(h[batch.logits_indices])  # [S, C]
        return self.lm_head(hidden) if vocab_ranges is None else self.logits_for_ranges(hidden, vocab_ranges)

    def logits_for_ranges(self, hidden: torch.Tensor, ranges: Sequence[tuple[int, int]]) -> torch.Tensor:
        """hidden [S, C] → [S, n] logits of only the ids in `ranges` ([start, end) each, concatenated in
        that order). With audio-only sampling 5,121 of 74,752 rows of the LM head are ever used: its
        other 93% (0.43 GB of bf16 weights read per decode step, ~6% of the whole model) are skipped,
        and every later pass over the logits (bias, ban, top-k) is 15x shorter."""
        weight = self.lm_head.weight
        return torch.cat([F.linear(hidden, weight[start:end]) for start, end in ranges], dim=1)

    # -- reference path ------------------------------------------------------------------
    def forward_reference(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Upstream's full causal forward without a cache: input_ids [B, T] -> logits [B, T, V].

        Always unfused, also on a fused model: it is the oracle the fast paths are tested against, and
        a fused GEMM may block its sums differently (another N), so it would no longer be upstream's
        op sequence nor an independent check of the fusion.
        """
        self._check_ids(input_ids)
        steps = input_ids.shape[1]
        bias = alibi_bias_reference(self.slopes(self.device), steps, steps, self.dtype)
        h = self.model.embed_tokens(input_ids.to(self.device))
        for layer in self.model.layers:
            h = layer.forward_reference(h, bias)
        return self.lm_head(self.model.norm(h))


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


# =======================================================================================
# Loading
# =======================================================================================
def check_dtype(dtype: Any) -> torch.dtype:
    """Validate a compute dtype (float32, bfloat16 or float16)."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.replace("torch.", ""), dtype)
    if dtype not in SUPPORTED_DTYPES:
        raise InvalidInputError(f"dtype: expected one of float32, bfloat16, float16, got {dtype!r}")
    return dtype


def check_device(device: Any) -> torch.device:
    """Validate a device spec; CUDA devices must exist."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidInputError(f"device: cannot parse {device!r} ({exc})") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"device: {device!r} requested but CUDA is not available")
    return dev


_INIT_FUNCTIONS = ("normal_", "uniform_", "kaiming_uniform_", "xavier_uniform_", "trunc_normal_", "zeros_", "ones_")


@contextlib.contextmanager
def _without_module_init():
    """nn.Linear / nn.Embedding constructors skip their random init while the model is built on meta.

    The weights are only allocated there (filled by a checkpoint or the dummy init later), and the
    first random op on a meta tensor imports torch._dynamo (~2.2 s on the 2-core CPU machine, a
    quarter of `editx clone --model dummy:tiny` end to end). Process-global for the duration of the
    constructor, like any `torch.nn.init` patch: call it while loading, not beside other threads
    that initialise modules.
    """
    saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS}
    try:
        for name in _INIT_FUNCTIONS:
            setattr(nn.init, name, _leave_as_is)
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


def _leave_as_is(tensor: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    return tensor


def build_step1(config: Step1Config, device: Any = "cpu", dtype: Any = torch.float32) -> Step1Model:
    """An uninitialised Step1Model on `device` in `dtype` (weights allocated, not filled)."""
    dev, dt = check_device(device), check_dtype(dtype)
    with torch.device("meta"), _without_module_init():
        model = Step1Model(config)
    _allocate(model, dev, dt)
    return model.eval().requires_grad_(False)  # inference only: no autograd, fused GEMMs in any grad mode


def _allocate(model: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Real, uninitialised storage on `device` for every meta parameter and buffer (floating ones in
    `dtype`); tied tensors stay tied. `Module.to_empty` does the same through the meta tensors'
    Python refs, whose first use imports sympy (~1 s on the 2-core CPU machine)."""
    made: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if id(tensor) not in made:
                dt = dtype if tensor.is_floating_point() else tensor.dtype
                fresh = torch.empty(tensor.shape, dtype=dt, device=device)
                made[id(tensor)] = nn.Parameter(fresh, requires_grad=False) if isinstance(tensor, nn.Parameter) else fresh
            setattr(module, name, made[id(tensor)])


def load_step1(model_dir: str | Path, device: Any = "cpu", dtype: Any = torch.bfloat16, *,
               fuse: bool = True) -> tuple[Step1Model, Step1Config]:
    """Load the LLM from an HF model dir (`config.json` + safetensors, single file or index + shards).

    Every key and shape is checked (CheckpointError naming the keys); bf16 or fp32 files
    are cast to `dtype`. With `fuse` (default) the projections are fused once the weights are in
    place on their final device and dtype (`Step1Model.fuse_projections`). Returns the model in eval
    mode and its config.
    """
    d = Path(model_dir)
    if not d.is_dir():
        raise CheckpointError(f"missing LLM model dir: {d}")
    config = Step1Config.from_json(d / "config.json")
    model = build_step1(config, device, dtype)
    state = read_safetensors_dir(d, what=f"Step1 LLM weights in {d}")
    load_checked(model, state, what=f"Step1 LLM weights in {d}")
    del state  # the file's tensors: freed before fusing copies the projections (one layer at a time)
    if fuse:
        model.fuse_projections()
    return model, config
