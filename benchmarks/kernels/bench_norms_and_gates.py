"""Fused small ops vs torch at the real shapes: Step1 RMSNorm (+ residual), SwiGLU; DiT LayerNorm + adaLN modulate.

    python benchmarks/kernels/bench_norms_and_gates.py
    TRITON_INTERPRET=1 python benchmarks/kernels/bench_norms_and_gates.py --device cpu --quick

Step1 (bf16): rows = tokens (1 = decode at batch 1, 64 = decode at batch 64, 512 = a prefill
chunk) × 3072 (norms) or × 8192 (SwiGLU). DiT (fp32): batch 2 × T frames × 512 with the gated
residual. GB/s count the bytes each op must read and write once.
"""
from __future__ import annotations

import torch

from _bench import finish, max_abs_diff, parse_args, row, time_us

from editx.kernels.adaln_modulate import adaln_modulate, adaln_modulate_ref
from editx.kernels.rms_norm import add_rms_norm, add_rms_norm_ref, rms_norm, rms_norm_ref
from editx.kernels.swiglu import swiglu, swiglu_ref


def _rms(args, rows, cols, dtype, residual):
    dev = args.device
    x, r = (torch.randn(rows, cols, device=dev).to(dtype) for _ in range(2))
    w = torch.randn(cols, device=dev).to(dtype)
    if residual:
        kernel, reference = (lambda: add_rms_norm(x, r, w, 1e-5)), (lambda: add_rms_norm_ref(x, r, w, 1e-5))
        moved = 4 * rows * cols * x.element_size()  # read x, r; write y, h
    else:
        kernel, reference = (lambda: rms_norm(x, w, 1e-5)), (lambda: rms_norm_ref(x, w, 1e-5))
        moved = 2 * rows * cols * x.element_size()
    diff = max_abs_diff(kernel()[0] if residual else kernel(), reference()[0] if residual else reference())
    name = f"{'add_rms_norm' if residual else 'rms_norm'} {rows}x{cols}"
    return row(name, {"op": name.split()[0], "rows": rows, "cols": cols, "dtype": str(dtype)[6:]},
               time_us(kernel, dev, args.quick), time_us(reference, dev, args.quick), bytes_moved=moved,
               max_diff=diff)


def _swiglu(args, rows, cols, dtype):
    dev = args.device
    g, u = (torch.randn(rows, cols, device=dev).to(dtype) for _ in range(2))
    kernel, reference = (lambda: swiglu(g, u)), (lambda: swiglu_ref(g, u))
    return row(f"swiglu {rows}x{cols}", {"op": "swiglu", "rows": rows, "cols": cols, "dtype": str(dtype)[6:]},
               time_us(kernel, dev, args.quick), time_us(reference, dev, args.quick),
               bytes_moved=3 * rows * cols * g.element_size(), max_diff=max_abs_diff(kernel(), reference()))


def _adaln(args, batch, steps, chans, dtype):
    dev = args.device
    x, branch = (torch.randn(batch, steps, chans, device=dev).to(dtype) for _ in range(2))
    shift, scale, gate = (torch.randn(batch, 1, chans, device=dev).to(dtype) for _ in range(3))
    kernel = lambda: adaln_modulate(x, shift, scale, 1e-6, branch, gate)  # noqa: E731
    reference = lambda: adaln_modulate_ref(x, shift, scale, 1e-6, branch, gate)  # noqa: E731
    return row(f"adaln+residual B={batch} T={steps}x{chans}",
               {"op": "adaln_modulate", "batch": batch, "frames": steps, "cols": chans, "dtype": str(dtype)[6:]},
               time_us(kernel, dev, args.quick), time_us(reference, dev, args.quick),
               bytes_moved=4 * batch * steps * chans * x.element_size(),
               max_diff=max_abs_diff(kernel()[0], reference()[0]))


def main(argv=None):
    args = parse_args(__doc__.split("\n\n")[0], argv)
    if args.quick:
        results = [_rms(args, 3, 128, torch.float32, False), _rms(args, 3, 128, torch.float32, True),
                   _swiglu(args, 3, 256, torch.float32), _adaln(args, 2, 17, 64, torch.float32)]
    else:
        bf16 = torch.bfloat16
        results = [_rms(args, n, 3072, bf16, res) for res in (False, True) for n in (1, 64, 512, 4096)]
        results += [_swiglu(args, n, 8192, bf16) for n in (1, 64, 512, 4096)]
        results += [_adaln(args, 2, t, 512, dt) for dt in (torch.float32, bf16) for t in (150, 600, 1500)]
    path = finish("norms_and_gates", args, results,
                  "reference = the runtime's torch ops (upstream math); kernel = one fused pass")
    print(path)


if __name__ == "__main__":
    main()
