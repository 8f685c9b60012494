"""The runtime with every kernel forced on equals the reference path (dummy:tiny, and Step1 model level)."""
from __future__ import annotations

import copy
import time

import numpy as np
import pytest
import torch

from editx import Runtime
from editx.engine.kv_cache import KVCache
from editx.engine.paged_kv import PagedBatch, PagedKVCache, SequenceChunk
from editx.engine.generate import generate
from editx.engine.sampling import SamplingParams
from editx.frontend import load_audio
from editx.layers import get_kernel_backend, kernel_backend
from editx.loading.random_init import randomize_
from editx.models.flow import reshape_mixed_tokens
from editx.models.step1 import Step1Config, build_step1
import speech_clips
from kernel_testing import DEVICE, needs_kernels

pytestmark = needs_kernels
# Step1 in fp32: kernel and reference differ in summation order only (~1e-6 on O(1) logits);
# 1e-4 still catches a wrong key, head or position (O(0.1) effects).
LOGITS_ATOL = 1e-4


@pytest.fixture(scope="module")
def step1():
    cfg = Step1Config(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=8,
                      num_attention_groups=2, vocab_size=300)
    return randomize_(build_step1(cfg, DEVICE, torch.float32), seed=5, depth=2)


def _static_run(model, rows: list[list[int]], extra: int) -> list[torch.Tensor]:
    """Chunked prefill of ragged rows into a static cache, then `extra` decode steps; all logits."""
    cache = KVCache.for_model(model, len(rows), 64)
    longest = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (longest - len(r)) for r in rows], device=DEVICE)
    outs = []
    for start in range(0, longest, 7):  # prefill chunks that do not divide the prompt
        end = min(longest, start + 7)
        positions = torch.full((len(rows),), start, device=DEVICE)
        outs.append(model(ids[:, start:end], cache, positions, attend_len=end))
    positions = torch.tensor([len(r) for r in rows], device=DEVICE)
    for step in range(extra):
        nxt = torch.full((len(rows), 1), 7 + step, device=DEVICE)
        outs.append(model(nxt, cache, positions, attend_len=48))  # a decode bucket beyond every position
        positions = positions + 1
    return outs


STATIC_ROWS = [[5 + (7 * i) % 250 for i in range(n)] for n in (3, 20)]


def _static_logits(model, backend: str) -> list[torch.Tensor]:
    with torch.no_grad(), kernel_backend(backend):
        return _static_run(model, STATIC_ROWS, extra=3)


def test_step1_static_cache_path_with_kernels_matches_reference(step1):
    for g, r in zip(_static_logits(step1, "triton"), _static_logits(step1, "reference")):
        torch.testing.assert_close(g, r, atol=LOGITS_ATOL, rtol=0)


def _paged_run(model, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A packed prefill of three ragged sequences, then one packed decode step: both steps' logits."""
    block_size = 5
    chunks = [SequenceChunk(list(range(10, 27)), 0, [3, 0, 7, 1]), SequenceChunk([44], 0, [2]),
              SequenceChunk([9, 8, 7], 0, [5])]
    cache = PagedKVCache.for_model(model, num_blocks=8, block_size=block_size)
    with torch.no_grad(), kernel_backend(backend):
        first = model.forward_paged(PagedBatch.build(chunks, block_size, DEVICE), cache)
        decode = [SequenceChunk([11], 17, [3, 0, 7, 1]), SequenceChunk([12], 1, [2]),
                  SequenceChunk([13], 3, [5])]
        second = model.forward_paged(PagedBatch.build(decode, block_size, DEVICE), cache)
    return first, second


def test_step1_paged_path_with_kernels_matches_reference(step1):
    for g, r in zip(_paged_run(step1, "triton"), _paged_run(step1, "reference")):
        torch.testing.assert_close(g, r, atol=LOGITS_ATOL, rtol=0)


def test_fused_step1_with_kernels_matches_unfused_reference(step1):
    """Fused projections feed the kernels strided views: q/k/v rows of the [.., H·D + 2·G·D] output
    (attention kernel, cache writes) and the gate/up halves of the [.., 2·I] output (swiglu kernel)."""
    fused = copy.deepcopy(step1).fuse_projections()
    assert fused.projections_fused and not step1.projections_fused
    got, ref = _static_logits(fused, "triton"), _static_logits(step1, "reference")
    # fp32: summation order of kernels and of the fused GEMM only (~1e-6); the same bound as above
    for g, r in zip(got + list(_paged_run(fused, "triton")), ref + list(_paged_run(step1, "reference"))):
        torch.testing.assert_close(g, r, atol=LOGITS_ATOL, rtol=0)


@pytest.fixture(scope="module")
def runtime():
    rt = Runtime.from_pretrained("dummy:tiny", seed=0, device=DEVICE.type)
    yield rt
    close = getattr(rt, "close", None)  # runtimes with a streaming engine stop its thread
    if close is not None:
        close()


def _prompt():
    """The first 2 s of the shared prompt clip: every stage runs, the interpreter has less to do."""
    wav, sr = load_audio(speech_clips.require())
    return wav[0, : 2 * sr].numpy(), sr


def _clone(rt: Runtime, backend: str):
    start = time.perf_counter()
    with kernel_backend(backend):
        audio = rt.clone(_prompt(), "His political stance was conservative.", "Hello there.", seed=3,
                         sampling=rt.default_sampling(max_new_tokens=11))
    return audio, time.perf_counter() - start


def test_clone_with_every_kernel_forced_matches_reference(runtime):
    """The public clone (whatever engine path the runtime takes) with every op forced onto Triton."""
    audio_k, secs_k = _clone(runtime, "triton")
    audio_r, secs_r = _clone(runtime, "reference")
    assert get_kernel_backend("dit_attention") == "auto", "the backend switch must be restored"
    assert audio_k.info["generated_tokens"] == audio_r.info["generated_tokens"]
    assert len(audio_k.samples) == len(audio_r.samples)
    # Audio: HiFT on random weights is extremely sensitive to its input (f0 → integrated sine
    # phase): a 1e-6 perturbation of the mel moves samples by ~1.5e-3 (measured on dummy:tiny),
    # so the kernels' fp32-level mel differences (checked tightly below) show up as ~2e-3 here.
    # 1e-2 (−40 dB) allows that and still fails for a real kernel error, which moves samples by O(0.1).
    diff = float(np.abs(audio_k.samples - audio_r.samples).max())
    assert diff <= 1e-2, f"max sample difference {diff:.3g}"
    print(f"clone: kernels {secs_k:.1f} s, reference {secs_r:.1f} s, max |audio diff| {diff:.2e}")


def test_llm_generation_ids_with_kernels_equal_reference(runtime):
    """The runtime's LLM through the engine's generate (prefill chunks + decode steps), same seed:
    fp32 logits differ by ~1e-6, far below any sampling boundary, so the ids are identical."""
    llm = runtime.components.llm
    prompt = [1] + [65536 + (37 * i) % 5120 for i in range(150)] + [1000 + i for i in range(20)]
    params = SamplingParams(seed=7, max_new_tokens=12)
    ids = {}
    for backend in ("triton", "reference"):
        with kernel_backend(backend), torch.no_grad():
            ids[backend] = list(generate(llm, prompt, params, prefill_chunk=64).raw_ids)
    assert ids["triton"] == ids["reference"] and len(ids["reference"]) == 12


def test_flow_mel_with_kernels_matches_reference(runtime):
    """The runtime's flow decoder (embedding, DiT attention and adaLN kernels; 10 CFG Euler steps)."""
    flow = runtime.components.flow
    gen = torch.Generator().manual_seed(2)
    mixed = lambda n: torch.tensor([int(torch.randint(0, 1024, (1,), generator=gen)) if i % 5 < 2  # noqa: E731
                                    else 1024 + int(torch.randint(0, 4096, (1,), generator=gen)) for i in range(n)])
    prompt_pairs = reshape_mixed_tokens(mixed(40))[None].to(DEVICE)
    pairs = reshape_mixed_tokens(mixed(12))[None].to(DEVICE)
    frames = 2 * (prompt_pairs.shape[1] + pairs.shape[1])
    feat = torch.randn(1, 2 * prompt_pairs.shape[1], 80, generator=gen).to(DEVICE)
    emb = torch.randn(1, 192, generator=gen).to(DEVICE)
    noise = torch.randn(1, 80, frames, generator=gen).to(DEVICE)
    mels = {}
    for backend in ("triton", "reference"):
        with kernel_backend(backend):
            mels[backend] = flow.inference(pairs, prompt_pairs, feat, emb, noise)
    # fp32 summation order only: observed ~4e-7 of the mel's range; 1e-5 of it catches any real error.
    scale = float(mels["reference"].abs().max())
    assert float((mels["triton"] - mels["reference"]).abs().max()) <= 1e-5 * scale
