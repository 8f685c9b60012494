"""vq02 streaming encoder: fast path vs a float64 reference of upstream's per-call algorithm.

The reference below is written straight from the fixtures README §5.10 / spec §11.9
description (explicit loops, per-head softmax, tap-by-tap FSMN), independent of the
module's code, and runs in float64.
"""
from __future__ import annotations

import math

import pytest
import torch

from editx.errors import InvalidInputError
from editx.models.vq02 import SANMEncoderConfig, SANMStreamingEncoder, VQ02EncoderState

# fp32 fast path vs float64 reference: outputs are LayerNorm-ed (|y| up to ~3.5); the
# measured max |diff| over these chunkings/variants is <= 1.9e-6 (fp32 epsilon 1.2e-7
# accumulated through 3 layers of width <= 560 after the x*sqrt(D) scaling). 2e-5 gives
# ~10x headroom yet stays far below what the test must catch (dropping the kv cache or
# shifting PE positions moves outputs by >= 1e-2, see test_reference_sensitivity_guard).
FP32_VS_FP64_ATOL = 2e-5


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Weights like the fixtures': N(0, 1/fan_in) matrices, small biases, LN gains near 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "after_norm.weight":
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))


def _encoder(cfg: SANMEncoderConfig, seed: int = 0) -> SANMStreamingEncoder:
    enc = SANMStreamingEncoder(cfg)
    _randomize(enc, seed)
    return enc.eval()


def _feats(batch: int, frames: int, size: int = 560, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, frames, size, generator=torch.Generator().manual_seed(seed))


# -- float64 reference -------------------------------------------------------------------
def _ln(x, w, b, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * w + b


def _reference_encode(enc: SANMStreamingEncoder, feats: torch.Tensor, chunk_lengths: list[int]) -> torch.Tensor:
    """Upstream's chunk loop for one utterance feats [N, 560] -> [N, D], float64."""
    cfg = enc.cfg
    sd = {k: v.double() for k, v in enc.state_dict().items()}
    names = ["encoders0.0"] + [f"encoders.{i}" for i in range(cfg.num_blocks - 1)]
    feats = feats.double()
    depth, half = cfg.input_size, cfg.input_size // 2
    inv = [math.exp(-j * math.log(10000.0) / (half - 1)) for j in range(half)]
    d, h, dk = cfg.output_size, cfg.attention_heads, cfg.output_size // cfg.attention_heads
    k_size = cfg.kernel_size
    left_pad = (k_size - 1) // 2 + cfg.sanm_shfit
    overlap_n = cfg.chunk_size[0] + cfg.chunk_size[2]
    drop = cfg.chunk_size[2]
    keep = None if cfg.encoder_chunk_look_back == -1 else cfg.encoder_chunk_look_back * cfg.chunk_size[1]

    overlap = torch.zeros(overlap_n, depth, dtype=torch.float64)
    kv_cache: dict[str, tuple[torch.Tensor, torch.Tensor] | None] = {n: None for n in names}
    position, start, outs = 0, 0, []
    for t in chunk_lengths:
        x = feats[start:start + t] * math.sqrt(d)
        for i in range(t):
            p = position + i + 1
            x[i, :half] += torch.tensor([math.sin(p * w) for w in inv], dtype=torch.float64)
            x[i, half:] += torch.tensor([math.cos(p * w) for w in inv], dtype=torch.float64)
        block = torch.cat([overlap, x])  # [R, depth]
        overlap = block[-overlap_n:]
        hid = block
        for n in names:
            z = _ln(hid, sd[f"{n}.norm1.weight"], sd[f"{n}.norm1.bias"], cfg.layernorm_eps)
            qkv = z @ sd[f"{n}.self_attn.linear_q_k_v.weight"].T + sd[f"{n}.self_attn.linear_q_k_v.bias"]
            q, k, v = qkv[:, :d], qkv[:, d:2 * d], qkv[:, 2 * d:]
            rows = hid.shape[0]
            if keep == 0:
                keys, values = k, v
            else:
                old = kv_cache[n]
                keys = k if old is None else torch.cat([old[0], k])
                values = v if old is None else torch.cat([old[1], v])
                new_k, new_v = k[: rows - drop], v[: rows - drop]
                if old is not None:
                    new_k, new_v = torch.cat([old[0], new_k]), torch.cat([old[1], new_v])
                    if keep is not None:
                        new_k, new_v = new_k[-keep:], new_v[-keep:]
                kv_cache[n] = (new_k, new_v)
            heads = []
            for head in range(h):
                cols = slice(head * dk, (head + 1) * dk)
                scores = (q[:, cols] / math.sqrt(dk)) @ keys[:, cols].T
                heads.append(torch.softmax(scores, dim=-1) @ values[:, cols])
            attn = torch.cat(heads, dim=1) @ sd[f"{n}.self_attn.linear_out.weight"].T + sd[f"{n}.self_attn.linear_out.bias"]
            kernel = sd[f"{n}.self_attn.fsmn_block.weight"][:, 0, :]  # [D, k]
            fsmn = v.clone()
            for r in range(rows):
                for tap in range(k_size):
                    src = r + tap - left_pad
                    if 0 <= src < rows:
                        fsmn[r] += kernel[:, tap] * v[src]
            a = attn + fsmn
            hid = hid + a if n != "encoders0.0" or cfg.input_size == d else a
            y = _ln(hid, sd[f"{n}.norm2.weight"], sd[f"{n}.norm2.bias"], cfg.layernorm_eps)
            ff = torch.relu(y @ sd[f"{n}.feed_forward.w_1.weight"].T + sd[f"{n}.feed_forward.w_1.bias"])
            hid = hid + ff @ sd[f"{n}.feed_forward.w_2.weight"].T + sd[f"{n}.feed_forward.w_2.bias"]
        out = _ln(hid, sd["after_norm.weight"], sd["after_norm.bias"], cfg.layernorm_eps)
        outs.append(out[-t:])
        position += t
        start += t
    return torch.cat(outs)


SMALL = dict(input_size=560, output_size=32, attention_heads=4, linear_units=48, num_blocks=3)
CHUNKINGS = {
    "odd": [4, 4, 3, 1],
    # > 6 calls: the 16-frame cache truncates and the first call's zero rows leave it.
    "long": [4, 4, 4, 4, 4, 4, 4, 2, 1, 6, 3, 4, 4],
    # a first call longer than the cache (upstream keeps it untruncated) then short ones.
    "big_first": [20, 3, 4, 1],
}


@pytest.mark.parametrize("chunking", list(CHUNKINGS))
@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"sanm_shfit": 2},
        {"encoder_chunk_look_back": -1},
        {"encoder_chunk_look_back": 0},
        {"chunk_size": (2, 3, 4), "encoder_chunk_look_back": 2},
    ],
    ids=["upstream", "shfit2", "unbounded_cache", "no_cache", "other_chunk_size"],
)
@pytest.mark.parametrize("path", ["encode", "encode_chunked"], ids=["layerwise", "call_by_call"])
def test_matches_float64_reference(chunking, variant, path):
    lengths = CHUNKINGS[chunking]
    enc = _encoder(SANMEncoderConfig(**SMALL, **variant))
    feats = _feats(1, sum(lengths))
    ref = _reference_encode(enc, feats[0], lengths)
    got = getattr(enc, path)(feats, lengths)[0]
    assert got.dtype == torch.float32
    err = (got.double() - ref).abs().max().item()
    assert err <= FP32_VS_FP64_ATOL, f"max |fast - float64 reference| = {err:.3g}"


def test_reference_sensitivity_guard():
    """The tolerance is meaningful: a run without the kv cache is far outside it."""
    lengths = CHUNKINGS["long"]
    cfg = SANMEncoderConfig(**SMALL)
    enc = _encoder(cfg)
    feats = _feats(1, sum(lengths))
    with_cache = enc.encode(feats, lengths)
    no_cache = _encoder(SANMEncoderConfig(**SMALL, encoder_chunk_look_back=0)).encode(feats, lengths)
    assert (with_cache - no_cache).abs().max() > 100 * FP32_VS_FP64_ATOL


def test_batch_two_equals_two_batch_one():
    enc = _encoder(SANMEncoderConfig(**SMALL))
    lengths = [4, 4, 4, 3, 2]
    feats = _feats(2, sum(lengths), seed=3)
    both = enc.encode(feats, lengths)
    for b in range(2):
        single = enc.encode(feats[b:b + 1], lengths)
        torch.testing.assert_close(both[b:b + 1], single, atol=1e-6, rtol=1e-6)


def test_forward_chunk_steps_equal_encode_and_state_is_not_mutated():
    enc = _encoder(SANMEncoderConfig(**SMALL))
    lengths = [4, 4, 3, 1, 4]
    feats = _feats(1, sum(lengths), seed=4)
    state = enc.init_state(1)
    assert state.position == 0 and state.overlap.shape == (1, 5, 560) and not state.overlap.any()
    outs, start = [], 0
    for t in lengths:
        before = (state.overlap.clone(), state.position, [None if c is None else c[0].clone() for c in state.kv])
        out, new_state = enc.forward_chunk(feats[:, start:start + t], state)
        assert out.shape == (1, t, SMALL["output_size"]) and new_state.position == state.position + t
        assert torch.equal(state.overlap, before[0]) and state.position == before[1]
        for c, old in zip(state.kv, before[2]):
            assert (c is None and old is None) or torch.equal(c[0], old)
        for c in new_state.kv:
            assert c is not None and c[0].shape[2] <= 16 + 4  # first call keeps its rows, later <= 16
        outs.append(out)
        state, start = new_state, start + t
    torch.testing.assert_close(torch.cat(outs, 1), enc.encode_chunked(feats, lengths), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_runs_close_to_fp32(dtype):
    enc32 = _encoder(SANMEncoderConfig.tiny())
    enc_lo = _encoder(SANMEncoderConfig.tiny()).to(dtype)
    lengths = [4, 4, 4, 2]
    feats = _feats(1, sum(lengths), seed=5)
    ref = enc32.encode(feats, lengths)
    for got in (enc_lo.encode(feats, lengths), enc_lo.encode_chunked(feats, lengths)):
        _assert_low_precision_close(got, ref, dtype)


def _assert_low_precision_close(got: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert got.dtype == dtype and torch.isfinite(got).all()
    # bf16 keeps 8 mantissa bits (rel. 4e-3 per op): measured max 0.034 / mean 0.006 for
    # bf16 (fp16: 0.0034 / 0.0008) on LayerNorm-ed outputs of ~unit scale; bounds ~4x that.
    assert (got.float() - ref).abs().max() < 0.15
    assert (got.float() - ref).abs().mean() < 0.02


# -- error paths ----------------------------------------------------------------------------
def test_encode_rejects_bad_inputs():
    enc = _encoder(SANMEncoderConfig(**SMALL))
    feats = _feats(1, 8)
    with pytest.raises(InvalidInputError, match="feats"):
        enc.encode(feats[0], [4, 4])
    with pytest.raises(InvalidInputError, match="560 features"):
        enc.encode(feats[..., :80], [4, 4])
    with pytest.raises(InvalidInputError, match="sum 7 does not match the 8 frames"):
        enc.encode(feats, [4, 3])
    with pytest.raises(InvalidInputError, match="positive"):
        enc.encode(feats, [4, 0, 4])
    with pytest.raises(InvalidInputError, match="chunk_lengths"):
        enc.encode(feats, torch.tensor([4.0, 4.0]))
    with pytest.raises(InvalidInputError, match="chunk_lengths"):
        enc.encode(feats, "44")
    with pytest.raises(InvalidInputError, match="chunk_lengths"):
        enc.encode(feats, [4.0, 4.0])
    with pytest.raises(InvalidInputError, match="floating-point"):
        enc.encode(feats.long(), [4, 4])


def test_forward_chunk_rejects_mismatched_state():
    enc = _encoder(SANMEncoderConfig(**SMALL))
    with pytest.raises(InvalidInputError, match="batch 2 does not match"):
        enc.forward_chunk(_feats(2, 4), enc.init_state(1))
    with pytest.raises(InvalidInputError, match="state"):
        enc.forward_chunk(_feats(1, 4), None)
    other = _encoder(SANMEncoderConfig.tiny())  # 2 layers, SMALL has 3
    with pytest.raises(InvalidInputError, match="state"):
        enc.forward_chunk(_feats(1, 4), other.init_state(1))
    with pytest.raises(InvalidInputError, match="at least one frame"):
        enc.forward_chunk(_feats(1, 0), enc.init_state(1))
    with pytest.raises(InvalidInputError, match="batch"):
        enc.init_state(0)
    assert isinstance(enc.init_state(3), VQ02EncoderState)
