"""Step1 with fused q|k|v and gate|up projections vs the same model unfused (upstream's seven GEMMs).

Random weights on odd shapes (hidden 96 / 90, 6 / 5 heads, 3 / 1 KV groups, head dims 16 / 18,
intermediate 200 / 150, vocabulary 301), static-cache path (prefill + decode) and paged path
(chunked prefill + decode). Tolerances:
* float32 — fused and unfused compute the same dot products; only the GEMM's blocking of the sums may
  differ for the larger N (observed 1.2e-6 on logits up to 5). 2e-5 is ~15x that, while a wrong split
  (k and v swapped: 2.2; gate and up swapped: 1.3 on these logits) is 5 orders of magnitude above it.
* bfloat16 — on the CPU both give identical bits (observed 0.0). A GPU GEMM may tile N = H·D + 2·G·D
  differently from N = H·D and round a projection output the other way (one bf16 ulp, 2^-8
  relative), which the two layers carry to the logits at about an ulp: 4 bf16 ulps at the largest
  |logit| (the convention of test_llm_cache.py) still sits far below any indexing error.
Every comparison also counts the GEMMs (F.linear calls), so a fused path that silently fell back to the
separate projections would fail too.
"""
from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from editx.engine.kv_cache import KVCache
from editx.engine.paged_kv import PagedBatch, PagedKVCache, SequenceChunk
from editx.loading.components import build_dummy_llm
from editx.loading.random_init import randomize_
from editx.loading.state_dict import load_checked
from editx.models.step1 import Step1Config, build_step1, load_step1
from safetensors.torch import save_file
from torch import nn
from torch.overrides import TorchFunctionMode

CONFIGS = {
    "gqa": Step1Config(hidden_size=96, intermediate_size=200, num_hidden_layers=2, num_attention_heads=6,
                       num_attention_groups=3, vocab_size=301),
    "mqa_odd_head_dim": Step1Config(hidden_size=90, intermediate_size=150, num_hidden_layers=2,
                                    num_attention_heads=5, num_attention_groups=1, vocab_size=301),
}
FP32_TOL = 2e-5
LAYERS = 2
GEMMS_FUSED = 4 * LAYERS + 1    # qkv, o, gate|up, down per layer + lm_head
GEMMS_UNFUSED = 7 * LAYERS + 1  # q, k, v, o, gate, up, down per layer + lm_head


def random_model(cfg: Step1Config, dtype: torch.dtype = torch.float32, seed: int = 3):
    return randomize_(build_step1(cfg, "cpu", torch.float32), seed, depth=LAYERS).to(dtype)


def random_ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 301, (batch, length), generator=torch.Generator().manual_seed(seed))


def bf16_tolerance(ref: torch.Tensor) -> float:
    """4 bf16 ulps at the largest |logit|."""
    exponent = torch.floor(torch.log2(ref.abs().max().double())).item()
    return 4 * torch.finfo(torch.bfloat16).eps * 2.0 ** exponent


class CountGemms(TorchFunctionMode):
    """Counts F.linear calls (nn.Linear.forward calls it too)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.linear:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def static_run(model, ids: torch.Tensor, prefix: int) -> tuple[torch.Tensor, list[int]]:
    """Prefill `prefix` ids, then one id per call over the static cache: logits [B, T, V], GEMMs per call."""
    batch, total = ids.shape
    cache = KVCache.for_model(model, batch, total + 3)
    outs, gemms = [], []
    with torch.no_grad():
        for start, end in [(0, prefix)] + [(t, t + 1) for t in range(prefix, total)]:
            with CountGemms() as count:
                outs.append(model(ids[:, start:end], cache, torch.full((batch,), start), attend_len=total + 3))
            gemms.append(count.calls)
    return torch.cat(outs, dim=1), gemms


def paged_run(model, prompts: list[list[int]], decode: list[list[int]], block_size: int = 5):
    """Chunked prefill (chunks of ≤ 6 ids, all sequences packed) then packed decode steps over the paged
    pool: the last-token logits of every step, and the GEMMs of every step."""
    cache = PagedKVCache.for_model(model, num_blocks=40, block_size=block_size)
    total = [len(p) + len(d) for p, d in zip(prompts, decode)]
    tables = [list(range(8 * i, 8 * i + -(-n // block_size))) for i, n in enumerate(total)]
    done, outs, gemms = [0] * len(prompts), [], []
    with torch.no_grad():
        while any(d < len(p) for d, p in zip(done, prompts)):
            chunks = []
            for i, p in enumerate(prompts):
                if done[i] < len(p):
                    n = min(6, len(p) - done[i])
                    chunks.append(SequenceChunk(p[done[i]:done[i] + n], done[i], tables[i]))
                    done[i] += n
            with CountGemms() as count:
                outs.append(model.forward_paged(PagedBatch.build(chunks, block_size, "cpu"), cache))
            gemms.append(count.calls)
        for step in range(len(decode[0])):
            chunks = [SequenceChunk([d[step]], len(p) + step, tab) for p, d, tab in zip(prompts, decode, tables)]
            with CountGemms() as count:
                outs.append(model.forward_paged(PagedBatch.build(chunks, block_size, "cpu"), cache))
            gemms.append(count.calls)
    return outs, gemms


# -- fused vs unfused: static cache and paged pool, prefill and decode ------------------------------
@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("prefix", [1, 13])
def test_static_cache_path_fused_matches_unfused_fp32(name, prefix):
    model = random_model(CONFIGS[name])
    ids = random_ids(2, 21)
    want, gemms = static_run(model, ids, prefix)
    assert set(gemms) == {GEMMS_UNFUSED}
    got, gemms = static_run(model.fuse_projections(), ids, prefix)
    assert set(gemms) == {GEMMS_FUSED}
    torch.testing.assert_close(got, want, atol=FP32_TOL, rtol=FP32_TOL)
    with torch.no_grad():  # and against the (always unfused) reference forward
        torch.testing.assert_close(got, model.forward_reference(ids), atol=FP32_TOL, rtol=FP32_TOL)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_static_cache_path_fused_matches_unfused_bf16(name):
    model = random_model(CONFIGS[name], torch.bfloat16)
    ids = random_ids(1, 19)
    want, _ = static_run(model, ids, prefix=11)
    got, gemms = static_run(model.fuse_projections(), ids, prefix=11)
    assert got.dtype == torch.bfloat16 and set(gemms) == {GEMMS_FUSED}
    tol = bf16_tolerance(want.float())
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=0)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_paged_path_fused_matches_unfused(name, dtype):
    prompts = [[5 + (11 * j + 3 * i) % 290 for j in range(n)] for i, n in enumerate((1, 9, 17))]
    decode = [[7 + i, 40 + i, 99 + i] for i in range(3)]
    model = random_model(CONFIGS[name], dtype)
    want, gemms = paged_run(model, prompts, decode)
    assert set(gemms) == {GEMMS_UNFUSED}
    got, gemms = paged_run(model.fuse_projections(), prompts, decode)
    assert set(gemms) == {GEMMS_FUSED} and len(got) == 3 + 3  # 3 prefill steps, 3 decode steps
    for g, w in zip(got, want):
        tol = FP32_TOL if dtype == torch.float32 else bf16_tolerance(w.float())
        torch.testing.assert_close(g.float(), w.float(), atol=tol, rtol=FP32_TOL if dtype == torch.float32 else 0)


def test_reference_forward_stays_unfused():
    model = random_model(CONFIGS["gqa"]).fuse_projections()
    with torch.no_grad(), CountGemms() as count:
        model.forward_reference(random_ids(1, 7))
    assert count.calls == GEMMS_UNFUSED and model.projections_fused


# -- names, values, memory ------------------------------------------------------------------------
def test_state_dict_keys_and_tensors_unchanged_by_fusion():
    model = random_model(CONFIGS["gqa"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shapes = {k: tuple(v.shape) for k, v in before.items()}
    model.fuse_projections()
    after = model.state_dict()
    assert list(after) == list(before)  # same keys, same order: upstream's checkpoint names
    assert {k: tuple(v.shape) for k, v in after.items()} == shapes
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert "model.layers.1.self_attn.k_proj.weight" in after and "model.layers.0.mlp.up_proj.weight" in after
    assert [n for n, _ in model.named_parameters()] == [k for k in before]  # nothing registered on top
    assert not list(model.buffers())


def _storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors`."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def test_fusion_does_not_double_memory():
    model = random_model(CONFIGS["gqa"])
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    assert _storage_bytes(model.parameters()) == params
    model.fuse_projections()
    fused = [m._fused for m in model._fusable()]
    assert len(fused) == 2 * LAYERS
    # the fused weights are the projections' storage: params + fused weights take the params' bytes
    assert _storage_bytes(list(model.parameters()) + fused) == params
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    qkv, gate_up = attn._fused, mlp._fused
    row = qkv.stride(0) * qkv.element_size()
    assert attn.q_proj.weight.data_ptr() == qkv.data_ptr()
    assert attn.k_proj.weight.data_ptr() == qkv.data_ptr() + 96 * row
    assert attn.v_proj.weight.data_ptr() == qkv.data_ptr() + (96 + 48) * row
    assert gate_up.shape == (400, 96) and mlp.up_proj.weight.data_ptr() == gate_up.data_ptr() + 200 * row
    model.fuse_projections()  # idempotent: the same tensor, nothing copied
    assert attn._fused is qkv and mlp._fused is gate_up


def test_unfuse_gives_each_projection_its_own_storage_and_keeps_values():
    model = random_model(CONFIGS["gqa"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.fuse_projections().unfuse_projections()
    assert not model.projections_fused
    params = list(model.parameters())
    assert len({p.untyped_storage().data_ptr() for p in params}) == len(params)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# -- never stale ------------------------------------------------------------------------------------
def _same_as_unfused(model, ids: torch.Tensor, gemms: int = GEMMS_FUSED) -> None:
    """model's static-cache logits equal an unfused deep copy's (its current weights), with `gemms` GEMMs per call."""
    ref = copy.deepcopy(model).unfuse_projections()
    want, _ = static_run(ref, ids, prefix=5)
    got, counts = static_run(model, ids, prefix=5)
    assert set(counts) == {gemms}
    if model.dtype == torch.bfloat16:
        torch.testing.assert_close(got.float(), want.float(), atol=bf16_tolerance(want.float()), rtol=0)
    else:
        torch.testing.assert_close(got.float(), want.float(), atol=FP32_TOL, rtol=FP32_TOL)


@pytest.mark.parametrize("convert", ["to_float64", "float", "to_bfloat16"])
def test_dtype_conversion_after_fusion_refuses(convert):
    model = random_model(CONFIGS["gqa"]).fuse_projections()
    old = model.model.layers[0].self_attn._fused
    model = {"to_float64": lambda m: m.to(torch.float64), "float": lambda m: m.double().float(),
             "to_bfloat16": lambda m: m.to(torch.bfloat16)}[convert](model)
    assert model.projections_fused  # re-fused by _apply, in the new dtype, over the new tensors
    attn = model.model.layers[0].self_attn
    assert attn._fused is not old and attn._fused.dtype == model.dtype
    assert attn.q_proj.weight.data_ptr() == attn._fused.data_ptr()
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    assert _storage_bytes(list(model.parameters()) + [m._fused for m in model._fusable()]) == params
    _same_as_unfused(model, random_ids(1, 9))


def test_in_place_load_state_dict_updates_the_fused_weights():
    model = random_model(CONFIGS["gqa"]).fuse_projections()
    other = random_model(CONFIGS["gqa"], seed=11).state_dict()
    model.load_state_dict(other)  # copies into the aliased Parameters
    assert model.projections_fused
    assert torch.equal(model.model.layers[1].self_attn._fused[96:144], other["model.layers.1.self_attn.k_proj.weight"])
    load_checked(model, random_model(CONFIGS["gqa"], seed=12).state_dict(), "test weights")  # the loader's way
    assert model.projections_fused
    _same_as_unfused(model, random_ids(1, 9))


def test_load_state_dict_with_assign_refuses_the_new_parameters():
    model = random_model(CONFIGS["gqa"]).fuse_projections()
    other = {k: v.clone() for k, v in random_model(CONFIGS["gqa"], seed=11).state_dict().items()}
    model.load_state_dict(other, assign=True)  # new Parameters: the post-load hook fuses them
    assert model.projections_fused
    attn = model.model.layers[0].self_attn
    assert torch.equal(attn.v_proj.weight, other["model.layers.0.self_attn.v_proj.weight"])
    _same_as_unfused(model, random_ids(1, 9))


def test_in_place_edit_of_a_projection_is_seen_by_the_fused_gemm():
    model = random_model(CONFIGS["gqa"]).fuse_projections()
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.mul_(-2.0)
    assert model.projections_fused
    _same_as_unfused(model, random_ids(1, 9))


@pytest.mark.parametrize("change", ["new_parameter", "set_data", "new_linear"])
def test_replaced_projection_is_detected_and_runs_unfused(change, caplog):
    model = random_model(CONFIGS["gqa"]).fuse_projections()
    attn, mlp = model.model.layers[1].self_attn, model.model.layers[1].mlp
    gen = torch.Generator().manual_seed(9)
    new_k = torch.randn(attn.k_proj.weight.shape, generator=gen) / 10
    if change == "new_parameter":
        attn.k_proj.weight = nn.Parameter(new_k)
    elif change == "set_data":
        attn.k_proj.weight.data = new_k
    else:
        mlp.up_proj = nn.Linear(96, 200, bias=False)
        with torch.no_grad():
            mlp.up_proj.weight.copy_(torch.randn(200, 96, generator=gen) / 10)
    assert not model.projections_fused
    stale = attn if change != "new_linear" else mlp
    with caplog.at_level(logging.WARNING, logger="editx"):
        # the changed layer module runs its separate GEMMs (3 for attention, 2 for the MLP), the rest fused
        _same_as_unfused(model, random_ids(1, 9), gemms=GEMMS_FUSED + (2 if stale is attn else 1))
    assert stale._fused is None  # the stale copy is dropped (its memory freed), once, with a warning
    assert sum("got new storage after fusion" in r.getMessage() for r in caplog.records) == 1
    model.fuse_projections()  # fuses the current weights again
    assert model.projections_fused
    _same_as_unfused(model, random_ids(1, 9))


def test_deep_copy_of_a_fused_model_computes_with_its_own_weights():
    model = random_model(CONFIGS["gqa"]).fuse_projections()
    twin = copy.deepcopy(model)  # Parameters clone their data: the copy's aliasing is gone
    with torch.no_grad():
        twin.model.layers[0].self_attn.q_proj.weight.mul_(0.5)
    got, _ = static_run(twin, random_ids(1, 9), prefix=5)
    want, _ = static_run(copy.deepcopy(twin).unfuse_projections(), random_ids(1, 9), prefix=5)
    torch.testing.assert_close(got, want, atol=FP32_TOL, rtol=FP32_TOL)
    twin.fuse_projections()
    assert twin.projections_fused and model.projections_fused


def test_autograd_reaches_the_projections_of_a_fused_model():
    """The fused weight is not a Parameter: with grad enabled and trainable weights the projections run one
    by one, so every Parameter gets its gradient (inference models have requires_grad off and stay fused)."""
    cfg = CONFIGS["gqa"]
    x = torch.randn(2, 5, cfg.hidden_size, generator=torch.Generator().manual_seed(4))
    # build_step1 makes inference models (requires_grad off); someone fine-tuning turns it back on
    layers = [random_model(cfg).requires_grad_(True).fuse_projections().model.layers[0],
              random_model(cfg).requires_grad_(True).model.layers[0]]
    for layer in layers:
        with CountGemms() as count:
            q, k, v = layer.self_attn._project(x)
            out = layer.mlp(x)
        assert count.calls == 3 + 3  # q, k, v; gate, up, down
        (q.square().sum() + k.sum() + 2 * v.sum() + out.square().sum()).backward()
    fused, plain = (dict(layer.named_parameters()) for layer in layers)
    for name in ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                 "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"):
        assert fused[name].grad is not None, name
        torch.testing.assert_close(fused[name].grad, plain[name].grad, atol=1e-6, rtol=1e-5, msg=name)
    with torch.inference_mode(), CountGemms() as count:
        layers[0].self_attn._project(x)
        layers[0].mlp(x)
    assert count.calls == 1 + 2


# -- the loaders fuse -------------------------------------------------------------------------------
def test_loaders_fuse_after_device_and_dtype(tmp_path):
    cfg = CONFIGS["mqa_odd_head_dim"]
    src = random_model(cfg)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(
        '{"model_type": "step1", "hidden_size": 90, "intermediate_size": 150, "num_hidden_layers": 2, '
        '"num_attention_heads": 5, "num_attention_groups": 1, "vocab_size": 301}')
    model, _ = load_step1(tmp_path, "cpu", torch.bfloat16)
    assert model.projections_fused and model.model.layers[0].mlp._fused.dtype == torch.bfloat16
    assert all(torch.equal(v, src.state_dict()[k].to(torch.bfloat16)) for k, v in model.state_dict().items())
    plain, _ = load_step1(tmp_path, "cpu", torch.float32, fuse=False)
    assert not plain.projections_fused
    dummy = build_dummy_llm(cfg, torch.device("cpu"), torch.float32, seed=0)
    assert dummy.projections_fused
    assert all(torch.equal(a, b) for a, b in zip(
        dummy.state_dict().values(), build_dummy_llm(cfg, torch.device("cpu"), torch.float32, 0, fuse=False)
        .state_dict().values()))


def test_built_models_are_inference_only_and_run_fused_with_grad_enabled():
    """build_step1 (every loader) turns requires_grad off, so a caller that forgot inference_mode still gets
    the fused GEMMs (and no autograd graph)."""
    cfg = CONFIGS["gqa"]
    model = random_model(cfg).fuse_projections()
    assert not any(p.requires_grad for p in model.parameters())
    x = torch.randn(1, 3, cfg.hidden_size, generator=torch.Generator().manual_seed(5))
    assert torch.is_grad_enabled()
    with CountGemms() as count:
        model.model.layers[0].self_attn._project(x)
        out = model.model.layers[0].mlp(x)
    assert count.calls == 1 + 2 and not out.requires_grad
