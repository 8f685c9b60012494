"""Ahead-of-time compile of every kernel for the GPU (sm_90, Hopper) on a machine without one.

The interpreter runs the kernels' Python semantics but not the compiler: type errors in scf.if /
while loops, dot shapes, unsupported ops only show up when Triton lowers to PTX. This test calls
each launcher with CPU tensors of realistic shapes, records the exact arguments and constexprs it
would launch with (GPU tile sizes), and compiles that specialisation with Triton's bundled ptxas
for sm_90 (no driver needed). Runs when Triton is installed and neither CUDA nor the interpreter
is active (on CUDA the other tests compile everything for real).
"""
from __future__ import annotations

import pytest
import torch

from editx.kernels import _triton
from kernel_testing import INTERPRETED, ON_CUDA

pytestmark = pytest.mark.skipif(not _triton.HAS_TRITON or INTERPRETED or ON_CUDA,
                                reason="needs Triton without the interpreter and without CUDA "
                                       "(with CUDA the kernel tests compile for the real device)")

_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.int32: "i32",
          torch.int64: "i64", torch.uint8: "u8", torch.bool: "i1"}
_OPTIONS = ("num_warps", "num_stages")


class _Recorder:
    """Stands in for a JIT kernel: `kernel[grid](*args, **kwargs)` records the call."""

    def __init__(self, real):
        self.real, self.calls = real, []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((args, kwargs))


def _compile(real, args, kwargs):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = real.arg_names
    signature, constexprs = {}, {}
    for name, value in zip(names, args):
        if isinstance(value, torch.Tensor):
            signature[name] = "*" + _TYPES[value.dtype]
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            signature[name] = "i32" if -2**31 <= value < 2**31 else "i64"
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"{name}: {type(value).__name__}")
    for name, value in kwargs.items():
        if name not in _OPTIONS:
            signature[name] = "constexpr"
            constexprs[name] = value
    options = {k: v for k, v in kwargs.items() if k in _OPTIONS}
    src = ASTSource(fn=real, signature={n: signature[n] for n in names}, constexprs=constexprs)
    return _triton.triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


def _record_and_compile(module, kernel_names, launch):
    """Run `launch()` with `module`'s kernels recorded, then compile every recorded specialisation."""
    saved = {n: getattr(module, n) for n in kernel_names}
    saved_require = module.require_launchable
    recorders = {n: _Recorder(saved[n]) for n in kernel_names}
    try:
        for n in kernel_names:
            setattr(module, n, recorders[n])
        module.require_launchable = lambda *a, **k: None
        launch()
    finally:
        for n, k in saved.items():
            setattr(module, n, k)
        module.require_launchable = saved_require
    compiled = 0
    for rec in recorders.values():
        for args, kwargs in rec.calls:
            assert "cubin" in _compile(rec.real, args, kwargs).asm
            compiled += 1
    assert compiled, "the launcher launched nothing"


@pytest.mark.parametrize("dtype", [torch.bfloat16])  # the LLM's dtype on CUDA; fp32 dots are covered by the DiT
def test_alibi_attention_compiles(dtype):
    from editx.kernels import paged_alibi_attention as K

    heads, groups, dim = 48, 4, 64
    k = torch.zeros(9, 16, groups, dim, dtype=dtype)
    tables = torch.zeros(2, 4, dtype=torch.int32)
    lens = torch.tensor([40, 7], dtype=torch.int32)
    slopes = torch.ones(heads)
    static = torch.zeros(2, groups, 64, dim, dtype=dtype)

    def launch():
        for n, cu in ((2, [0, 1, 2]), (9, [0, 2, 9])):  # decode batch, prefill batch
            q = torch.zeros(n, heads, dim, dtype=dtype)
            pos = torch.zeros(n, dtype=torch.int64)
            K.paged_alibi_attention(q, k, k, tables, lens, torch.tensor(cu, dtype=torch.int32), pos, slopes,
                                    num_splits=3)
        K.contiguous_alibi_attention(torch.zeros(2, 1, heads, dim, dtype=dtype), static, static,
                                     torch.zeros(2, 1, dtype=torch.int64), 64, slopes, num_splits=1)

    _record_and_compile(K, ["_alibi_attention_kernel", "_merge_splits_kernel"], launch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dit_attention_compiles(dtype):
    from editx.kernels import dit_attention as K

    q = torch.zeros(2, 40, 8, 64, dtype=dtype)
    norm = (torch.ones(64, dtype=dtype), torch.zeros(64, dtype=dtype), 1e-5)
    cache = torch.zeros(2, 8, 30, 64, dtype=dtype)

    def launch():
        K.dit_attention(q, q, q, norm, norm, torch.ones(2, 40, dtype=torch.bool),
                        k_out=torch.zeros(2, 8, 40, 64, dtype=dtype))
        K.dit_attention(q, q, q, norm, norm, None, cache, cache, k_out=torch.zeros(2, 8, 40, 64, dtype=dtype))
        # ragged chunk batches: one mask over [new | cached] keys (MASK_CACHE variant)
        K.dit_attention(q, q, q, norm, norm, torch.ones(2, 70, dtype=torch.bool), cache, cache,
                        k_out=torch.zeros(2, 8, 40, 64, dtype=dtype))

    _record_and_compile(K, ["_dit_attention_kernel"], launch)


def test_small_ops_compile():
    from editx.kernels import adaln_modulate, dual_codebook_embedding, rms_norm, swiglu

    bf16 = torch.bfloat16
    x = torch.zeros(3, 3072, dtype=bf16)
    _record_and_compile(rms_norm, ["_rms_norm_kernel"], lambda: (rms_norm.rms_norm(x, x[0], 1e-5),
                                                                   rms_norm.add_rms_norm(x, x, x[0], 1e-5)))
    g = torch.zeros(3, 8192, dtype=bf16)
    _record_and_compile(swiglu, ["_swiglu_kernel"], lambda: swiglu.swiglu(g, g))
    h = torch.zeros(2, 30, 512)
    mod = torch.zeros(2, 1, 512)
    _record_and_compile(adaln_modulate, ["_adaln_kernel"],
                        lambda: (adaln_modulate.adaln_modulate(h, mod, mod, 1e-6),
                                 adaln_modulate.adaln_modulate(h, mod, mod, 1e-6, h.transpose(1, 2).contiguous()
                                                               .transpose(1, 2), mod)))
    table = torch.zeros(5121, 256)
    ids = torch.zeros(12, dtype=torch.int64)
    cu = torch.tensor([0, 5, 12], dtype=torch.int32)
    out = torch.zeros(2, 9, 512)
    offs = torch.tensor([0, out.stride(0)])
    _record_and_compile(dual_codebook_embedding, ["_mixed_embedding_kernel", "_pair_embedding_kernel"],
                        lambda: (dual_codebook_embedding.mixed_embedding(ids, cu, table, out, offs, 3,
                                                                         first_ids=torch.zeros(2, dtype=torch.int64)),
                                 dual_codebook_embedding.pair_embedding(torch.zeros(2, 7, 2, dtype=torch.int64),
                                                                        table)))
