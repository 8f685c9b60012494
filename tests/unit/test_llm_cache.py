"""Step1: the static-KV-cache path against the reference full forward, ALiBi, config, errors.

Random tiny weights, odd lengths. Tolerances:
* float64 — both paths are the same algorithm; only summation order differs, so they
  agree to ~1e-15 relative; 1e-10 leaves a wide margin while any indexing/masking bug
  (an O(1) change) fails.
* float32 — the fixtures measured the fp32 rounding error of these logits at 2.4e-6
  (README §7) and observed cache-vs-full differences up to 2e-6 upstream; 2e-5 is 10x.
* bfloat16 / float16 — each path rounds to 8 / 11 significant bits after every op and
  kernels may round differently; logits of these 2-layer models stay within ~1.5 ulps of
  the fp32 model, so we allow 4 ulps (of that dtype) at the logit scale.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from editx.engine.kv_cache import KVCache
from editx.errors import CheckpointError, InvalidInputError
from editx.models.step1 import (
    Step1Config,
    alibi_bias_for_positions,
    alibi_bias_reference,
    alibi_slopes,
    build_step1,
    load_step1,
)

from random_weights import init_step1_random_

VOCAB = 300


def tiny_config(heads: int = 6, groups: int = 2, layers: int = 2) -> Step1Config:
    return Step1Config(hidden_size=16 * heads, intermediate_size=80, num_hidden_layers=layers,
                       num_attention_heads=heads, num_attention_groups=groups, vocab_size=VOCAB)


def random_model(dtype: torch.dtype = torch.float64, seed: int = 0, **kw):
    model = init_step1_random_(build_step1(tiny_config(**kw), "cpu", torch.float32), seed)
    return model.to(dtype)


def random_ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def low_precision_tolerance(ref: torch.Tensor, dtype: torch.dtype) -> float:
    """4 ulps of `dtype` at the largest |logit| (eps = 2^-7 for bf16, 2^-10 for fp16)."""
    exponent = torch.floor(torch.log2(ref.abs().max().double())).item()
    return 4 * torch.finfo(dtype).eps * 2.0 ** exponent


TOL = {torch.float64: 1e-10, torch.float32: 2e-5}


# -- ALiBi ----------------------------------------------------------------------------------
@pytest.mark.parametrize("heads", [1, 2, 3, 4, 6, 8, 12, 48])
def test_slopes_follow_the_power_of_two_rule(heads):
    import math

    n = 2 ** math.floor(math.log2(heads))
    want = [2 ** (-8 * k / n) for k in range(1, n + 1)] + [2 ** (-4 * k / n) for k in range(1, 2 * (heads - n), 2)]
    got = alibi_slopes(heads)
    assert got.dtype == torch.float32 and got.shape == (heads,)
    torch.testing.assert_close(got.double(), torch.tensor(want, dtype=torch.float64), rtol=1e-6, atol=0)


def test_real_model_slopes_match_spec():
    s = alibi_slopes(48)
    assert s[0].item() == pytest.approx(0.8409, abs=1e-4) and s[31].item() == pytest.approx(2 ** -8)
    assert s[32].item() == pytest.approx(0.9170, abs=1e-4) and s[47].item() == pytest.approx(0.06816, abs=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_position_bias_equals_reference_bias(dtype):
    slopes = alibi_slopes(6)
    for key_len, query_len in [(1, 1), (7, 7), (9, 4), (37, 1)]:
        ref = alibi_bias_reference(slopes, key_len, query_len, dtype)
        pos = torch.arange(key_len - query_len, key_len)[None]
        got = alibi_bias_for_positions(slopes, pos, key_len, dtype)
        assert got.dtype == dtype and torch.equal(got, ref)


def test_bias_masks_later_keys_and_values_sqrt_distance():
    slopes = alibi_slopes(4)
    bias = alibi_bias_for_positions(slopes, torch.tensor([[3]]), 6, torch.float32)[0, :, 0]
    assert torch.isneginf(bias[:, 4:]).all()
    torch.testing.assert_close(bias[:, :4], -slopes[:, None] * torch.tensor([3, 2, 1, 0]).float().sqrt()[None])


# -- cache path vs reference ------------------------------------------------------------------
def run_cached(model, ids: torch.Tensor, prefix: int, capacity: int, attend_len: int | None = None) -> torch.Tensor:
    """Prefill `prefix` ids in one call, then one id per call; logits [B, T, V]."""
    batch, total = ids.shape
    cache = KVCache.for_model(model, batch, capacity)
    outs = [model(ids[:, :prefix], cache, torch.zeros(batch, dtype=torch.long))]
    for t in range(prefix, total):
        outs.append(model(ids[:, t:t + 1], cache, torch.full((batch,), t), attend_len=attend_len))
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("prefix", [1, 3, 7, 37])
def test_cached_decode_matches_reference(dtype, prefix):
    model = random_model(dtype)
    ids = random_ids(1, 41)
    with torch.no_grad():
        ref = model.forward_reference(ids)
        got = run_cached(model, ids, prefix, capacity=45)
    torch.testing.assert_close(got, ref, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("prefix", [1, 7, 37])
def test_cached_decode_low_precision(dtype, prefix):
    ids = random_ids(1, 41)
    model = random_model(dtype)
    with torch.no_grad():
        ref = model.forward_reference(ids).float()
        got = run_cached(model, ids, prefix, capacity=41).float()
        ref32 = random_model(torch.float32).forward_reference(ids)
    tol = low_precision_tolerance(ref32, dtype)
    torch.testing.assert_close(got, ref, atol=tol, rtol=0)
    # ... and within the same noise of the fp32 model (a dtype bug would be O(1)).
    torch.testing.assert_close(got, ref32, atol=tol, rtol=0)


def test_attend_len_and_stale_slots_do_not_change_results():
    model = random_model()
    ids = random_ids(1, 13)
    with torch.no_grad():
        ref = model.forward_reference(ids)
        short = run_cached(model, ids, 5, capacity=64, attend_len=16)
        # Garbage beyond each query's position must be masked out.
        cache = KVCache.for_model(model, 1, 64)
        cache.k.normal_(0, 100)
        cache.v.normal_(0, 100)
        outs = [model(ids[:, :5], cache, torch.zeros(1, dtype=torch.long))]
        outs += [model(ids[:, t:t + 1], cache, torch.tensor([t])) for t in range(5, 13)]
    torch.testing.assert_close(short, ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(torch.cat(outs, 1), ref, atol=1e-10, rtol=1e-10)


def test_batch_with_ragged_lengths_matches_each_row():
    """Right-padded prefill of 3 rows (lengths 5, 12, 1), then per-row decode positions."""
    model = random_model(heads=4, groups=2)
    lengths, extra = [5, 12, 1], 4
    rows = [random_ids(1, n + extra, seed=10 + i)[0] for i, n in enumerate(lengths)]
    longest = max(lengths)
    padded = torch.zeros(3, longest, dtype=torch.long)
    for i, (row, n) in enumerate(zip(rows, lengths)):
        padded[i, :n] = row[:n]
    cache = KVCache.for_model(model, 3, longest + extra)
    with torch.no_grad():
        last = model(padded, cache, torch.zeros(3, dtype=torch.long), logits_at=torch.tensor(lengths) - 1)
        steps = []
        for s in range(extra):
            tokens = torch.stack([row[n + s] for row, n in zip(rows, lengths)]).view(3, 1)
            steps.append(model(tokens, cache, torch.tensor(lengths) + s)[:, 0])
        for i, (row, n) in enumerate(zip(rows, lengths)):
            ref = model.forward_reference(row[None])[0]
            torch.testing.assert_close(last[i], ref[n - 1], atol=1e-10, rtol=1e-10)
            for s in range(extra):
                torch.testing.assert_close(steps[s][i], ref[n + s], atol=1e-10, rtol=1e-10)


def test_logits_at_selects_rows():
    model = random_model()
    ids = random_ids(2, 9)
    with torch.no_grad():
        full = model(ids, KVCache.for_model(model, 2, 9), torch.zeros(2, dtype=torch.long))
        picked = model(ids, KVCache.for_model(model, 2, 9), torch.zeros(2, dtype=torch.long),
                       logits_at=torch.tensor([8, 3]))
    assert picked.shape == (2, VOCAB)
    torch.testing.assert_close(picked, torch.stack([full[0, 8], full[1, 3]]))


def test_state_dict_uses_upstream_keys():
    cfg = tiny_config(layers=1)
    keys = set(build_step1(cfg).state_dict())
    want = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} | {
        f"model.layers.0.{k}.weight" for k in (
            "input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj",
            "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    }
    assert keys == want
    sd = build_step1(cfg).state_dict()
    assert sd["model.layers.0.self_attn.k_proj.weight"].shape == (cfg.num_attention_groups * cfg.head_dim, cfg.hidden_size)


def test_slopes_survive_dtype_cast():
    model = random_model(torch.bfloat16)
    assert model.slopes(torch.device("cpu")).dtype == torch.float32
    assert torch.equal(model.slopes(torch.device("cpu")), alibi_slopes(6))


# -- config -------------------------------------------------------------------------------------
def test_full_and_tiny_configs():
    full = Step1Config.full()
    assert (full.hidden_size, full.intermediate_size, full.num_hidden_layers) == (3072, 8192, 32)
    assert (full.num_attention_heads, full.num_attention_groups, full.vocab_size, full.head_dim) == (48, 4, 74752, 64)
    tiny = Step1Config.tiny()
    assert tiny.vocab_size == 74752 and tiny.head_dim == 32 and tiny.num_attention_heads % tiny.num_attention_groups == 0


@pytest.mark.parametrize("bad", [
    dict(hidden_size=100), dict(num_attention_groups=4), dict(vocab_size=0), dict(rms_norm_eps=0.0),
    dict(num_hidden_layers=1.5), dict(eos_token_id=VOCAB),
])
def test_config_rejects_bad_values(bad):
    kw = dict(hidden_size=96, intermediate_size=80, num_hidden_layers=2, num_attention_heads=6,
              num_attention_groups=2, vocab_size=VOCAB)
    kw.update(bad)
    with pytest.raises(InvalidInputError, match=list(bad)[0]):
        Step1Config(**kw)


# -- forward errors -------------------------------------------------------------------------------
def test_forward_rejects_bad_inputs():
    model = random_model(torch.float32)
    cache = KVCache.for_model(model, 1, 8)
    zero = torch.zeros(1, dtype=torch.long)
    with pytest.raises(InvalidInputError, match="input_ids"):
        model(torch.zeros(4, dtype=torch.long), cache, zero)
    with pytest.raises(InvalidInputError, match="input_ids"):
        model(torch.tensor([[1, VOCAB]]), cache, zero)
    with pytest.raises(InvalidInputError, match="input_ids"):
        model(torch.zeros(1, 2), cache, zero)
    with pytest.raises(InvalidInputError, match="cache.k"):
        model(torch.zeros(2, 3, dtype=torch.long), cache, torch.zeros(2, dtype=torch.long))
    with pytest.raises(InvalidInputError, match="cache.k"):
        model(torch.zeros(1, 3, dtype=torch.long), KVCache.for_model(random_model(torch.float64), 1, 8), zero)
    with pytest.raises(InvalidInputError, match="attend_len"):
        model(torch.zeros(1, 3, dtype=torch.long), cache, zero, attend_len=9)
    with pytest.raises(InvalidInputError, match="positions"):
        model(torch.zeros(1, 3, dtype=torch.long), cache, torch.zeros(2, dtype=torch.long))
    with pytest.raises(InvalidInputError, match="capacity"):
        KVCache.allocate(num_layers=2, batch=1, num_kv_heads=2, capacity=0, head_dim=16)


# -- loading --------------------------------------------------------------------------------------
def write_checkpoint(tmp_path, model, shards: int = 1, dtype=torch.float32):
    cfg = model.config
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "step1", "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers, "num_attention_heads": cfg.num_attention_heads,
        "num_attention_groups": cfg.num_attention_groups, "vocab_size": cfg.vocab_size,
        "rms_norm_eps": cfg.rms_norm_eps, "max_seq_len": 32768, "bos_token_id": 1, "eos_token_id": 3,
        "pad_token_id": 0,
    }))
    sd = {k: v.to(dtype).contiguous() for k, v in model.state_dict().items()}
    keys = sorted(sd)
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: sd[k] for k in keys[i::shards]}
        save_file(part, str(tmp_path / name))
        weight_map.update({k: name for k in part})
    if shards > 1:
        (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return sd


@pytest.mark.parametrize("shards,file_dtype", [(1, torch.float32), (3, torch.bfloat16)])
def test_load_step1_roundtrip(tmp_path, shards, file_dtype):
    src = random_model(torch.float32)
    sd = write_checkpoint(tmp_path, src, shards, file_dtype)
    for dtype in (torch.float32, torch.bfloat16):
        model, cfg = load_step1(tmp_path, "cpu", dtype)
        assert cfg == src.config and model.dtype == dtype and not model.training
        for k, v in model.state_dict().items():
            assert torch.equal(v, sd[k].to(dtype)), k


def test_load_step1_names_bad_keys(tmp_path):
    src = random_model(torch.float32)
    write_checkpoint(tmp_path, src)
    sd = {k: v.contiguous() for k, v in src.state_dict().items()}
    sd.pop("lm_head.weight")
    sd["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(3, 3)
    sd["model.extra.weight"] = torch.zeros(1)
    save_file(sd, str(tmp_path / "model-00001-of-00001.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_step1(tmp_path, "cpu", torch.float32)
    msg = str(err.value)
    assert "lm_head.weight" in msg and "q_proj" in msg and "model.extra.weight" in msg


def test_load_step1_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="model dir"):
        load_step1(tmp_path / "absent")
    with pytest.raises(CheckpointError, match="config.json"):
        load_step1(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "step1", "hidden_size": 96}')
    with pytest.raises(CheckpointError, match="missing keys"):
        load_step1(tmp_path)
    write_checkpoint(tmp_path, random_model(torch.float32))
    for f in tmp_path.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(CheckpointError, match="safetensors"):
        load_step1(tmp_path)


def test_load_step1_rejects_bad_dtype_and_device(tmp_path):
    write_checkpoint(tmp_path, random_model(torch.float32))
    with pytest.raises(InvalidInputError, match="dtype"):
        load_step1(tmp_path, "cpu", torch.int8)
    with pytest.raises(InvalidInputError, match="device"):
        load_step1(tmp_path, "nonsense", torch.float32)
