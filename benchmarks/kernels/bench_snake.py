"""HiFT's Snake activation: the fused kernel vs upstream's torch ops, alone and inside a streamed HiFT chunk.

    python benchmarks/kernels/bench_snake.py
    TRITON_INTERPRET=1 python benchmarks/kernels/bench_snake.py --device cpu --quick

Shapes: the Snakes of a steady streamed chunk (48 token frames = 96 mel frames + 8 cached = 104 mel
frames) at the three upsampling stages of the real vocoder, [B, 256, 832], [B, 128, 4160],
[B, 64, 12480], for 1 and 16 streams batched, fp32 (upstream's decoder dtype) and bf16. Then the
whole HiFT chunk with the kernel vs without, and the ops each dispatches (every launched op counts,
view ops do not): the launch count is what a chunk costs on the host.
"""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from _bench import finish, max_abs_diff, parse_args, row, time_us

from editx.kernels import snake as snake_kernels
from editx.kernels.snake import snake, snake_ref
from editx.layers import kernel_backend
from editx.models.graph_safety import inside_interpreted_kernel

VIEWS = {"view", "_unsafe_view", "t", "transpose", "expand", "slice", "select", "unsqueeze", "squeeze", "permute",
         "alias", "as_strided", "split", "unbind", "reshape", "split_with_sizes", "unflatten", "chunk", "narrow",
         "detach", "lift_fresh"}


class _CountOps(TorchDispatchMode):
    """Ops a call dispatches on the host: torch ops (views excluded) + Snake kernel launches. Under
    Triton's interpreter the kernel's body runs as torch/numpy ops; those are one launch on a GPU."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ not in VIEWS and not inside_interpreted_kernel():
            self.ops += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        self._launcher = snake_kernels.snake

        def counted(*a, **k):
            self.ops += 1  # the launch itself
            return self._launcher(*a, **k)

        snake_kernels.snake = counted
        return super().__enter__()

    def __exit__(self, *exc):
        snake_kernels.snake = self._launcher
        return super().__exit__(*exc)


def _snake_row(args, batch, channels, steps, dtype):
    dev = args.device
    x = (torch.randn(batch, channels, steps, device=dev) * 3).to(dtype)
    alpha = (torch.rand(channels, device=dev) * 1.9 + 0.1).to(dtype)
    kernel, reference = (lambda: snake(x, alpha)), (lambda: snake_ref(x, alpha))
    return row(f"snake [{batch}, {channels}, {steps}] {str(dtype)[6:]}",
               {"op": "snake", "batch": batch, "channels": channels, "steps": steps, "dtype": str(dtype)[6:]},
               time_us(kernel, dev, args.quick), time_us(reference, dev, args.quick),
               bytes_moved=2 * x.numel() * x.element_size(), max_diff=max_abs_diff(kernel(), reference()))


def _hift_chunk_row(args, mel_frames):
    """One streamed HiFT call with and without the kernel (same weights, same NSF draws)."""
    from editx.models.hift import HiFTConfig, HiFTGenerator, HiFTStreamState

    dev = args.device
    torch.manual_seed(0)
    cfg = HiFTConfig.tiny() if args.quick else HiFTConfig.full()
    hift = HiFTGenerator(cfg).requires_grad_(False).eval().to(dev)
    mel = torch.randn(1, 80, mel_frames, device=dev)

    def call(backend):
        def run():
            with torch.inference_mode(), kernel_backend(backend, "snake"):
                state = HiFTStreamState(mel_cache_len=8)
                return hift.vocode_chunk(mel, state, last=True, generator=torch.Generator(dev).manual_seed(1))[0]
        return run

    counts = {}
    for backend in ("triton", "reference"):
        counter = _CountOps()
        with counter:
            call(backend)()
        counts[backend] = counter.ops
    return row(f"HiFT chunk, {mel_frames} mel frames ({'tiny' if args.quick else 'real'} dims)",
               {"op": "hift_chunk", "mel_frames": mel_frames},
               time_us(call("triton"), dev, args.quick), time_us(call("reference"), dev, args.quick),
               max_diff=max_abs_diff(call("triton")(), call("reference")()),
               ops_with_kernel=counts["triton"], ops_reference=counts["reference"])


def main(argv=None):
    args = parse_args(__doc__.split("\n\n")[0], argv)
    if args.quick:
        results = [_snake_row(args, 1, 16, 37, torch.float32), _hift_chunk_row(args, 24)]
    else:
        stages = ((256, 832), (128, 4160), (64, 12480))
        results = [_snake_row(args, b, c, t, dt) for dt in (torch.float32, torch.bfloat16) for b in (1, 16)
                   for c, t in stages]
        results.append(_hift_chunk_row(args, 104))
    for r in results:
        if "ops_with_kernel" in r:
            print(f"{r['case']}: {r['ops_reference']} ops dispatched with torch's Snake, {r['ops_with_kernel']} fused")
    path = finish("snake", args, results,
                  "reference = upstream's Snake ops in the activation dtype; kernel = one fused fp32 pass")
    print(path)


if __name__ == "__main__":
    main()
