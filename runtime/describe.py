"""What a Runtime actually runs, and the software it runs on: for bug reports, deploy checks and the
start of every GPU log (`editx env`, `Runtime.describe()`, the server's `/v1/info`).

Why: most of the runtime's speed comes from choices made at load time — the LLM decode step as CUDA
graphs only when the paged attention runs its Triton kernel, Triton kernels only on CUDA, the DiT slot
pool sized from free memory, ONNX graphs on the CUDA provider only when onnxruntime-gpu is installed.
A wrong wheel silently drops a path (e.g. onnxruntime without CUDA: vq06 on the CPU), so the effective
choice is reported, not the requested one.
"""
from __future__ import annotations

import importlib.metadata
import platform
import sys

import torch

from .layers.attention import alibi_uses_triton, dit_kernel_slower
from .layers.backend import OPS, get_kernel_backend

# Distributions whose versions decide what runs (onnxruntime-gpu brings the CUDA provider; cuda-python and
# tensorrt the TensorRT backend).
PACKAGES = ("torch", "triton", "numpy", "onnxruntime", "onnxruntime-gpu", "tensorrt", "cuda-python", "soundfile",
            "soxr", "safetensors", "sentencepiece", "fastapi", "uvicorn")


def environment() -> dict:
    """Python, package versions (None: not installed), onnxruntime's providers and the GPUs."""
    versions = {name: _version(name) for name in PACKAGES}
    try:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
    except ImportError:
        providers = []
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": versions,
            "onnxruntime_providers": providers, "cuda_available": torch.cuda.is_available(), "gpus": _gpus(),
            "cpu_threads": torch.get_num_threads()}


def describe(rt) -> dict:
    """The effective settings of `rt` (an `editx.Runtime`): model, LLM path, KV pool, decoder path,
    front end and kernels, as plain JSON-able values."""
    cfg, comp = rt.config, rt.components
    engine = rt._streamer.engine
    return {
        "model": comp.source, "device": str(cfg.device), "device_name": _device_name(cfg.device),
        "llm": _llm(rt, engine), "kv_cache": _kv(engine), "decoder": _decoder(rt),
        "front_end": _front_end(rt), "kernels": _kernels(cfg.device, comp.flow.dtype),
        "voice_cache": {"max_bytes": rt.voice_cache.max_bytes, "voices": len(rt.voice_cache)},
    }


def _llm(rt, engine) -> dict:
    llm, cfg = rt.components.llm, rt.config
    graphs = engine.graphs
    return {
        "dtype": _dtype(llm.dtype), "layers": llm.config.num_hidden_layers, "hidden_size": llm.config.hidden_size,
        "parameters": sum(p.numel() for p in llm.parameters()),
        "fused_projections": llm.projections_fused,
        "audio_only_logits": engine.vocab is not None,
        "attention": "triton" if alibi_uses_triton(llm.device, llm.config.head_dim, _engine_backend(engine))
        else "reference",
        # Streaming decode-only steps: CUDA graphs per batch bucket (captured on first use or by warmup()).
        "decode_graphs": None if graphs is None else {"mode": graphs.mode, "buckets": list(graphs.buckets),
                                                      "captured": graphs.captured_buckets},
        "offline_cuda_graphs": bool(cfg.cuda_graphs and llm.device.type == "cuda"),
    }


def _engine_backend(engine) -> str:
    return getattr(engine.graphs, "backend", "auto") if engine.graphs is not None else "auto"


def _kv(engine) -> dict:
    cache, sched = engine.cache, engine.config
    return {"blocks": sched.num_blocks, "block_size": sched.block_size,
            "bytes": cache.bytes_per_block * cache.num_blocks, "max_num_seqs": sched.max_num_seqs,
            "max_model_len": sched.max_model_len, "prefix_caching": True}


def _decoder(rt) -> dict:
    cfg, flow, slots = rt.config, rt.components.flow, rt.decoder.slots
    pool = None
    if slots is not None:
        pool = {"streams": slots.streams, "free": slots.free_slots, "bytes": slots.nbytes, "mode": slots.mode,
                "graphs_captured": len(slots.captured), "graph_error": slots.graph_error,
                "prompt_frames": slots.prompt_capacity}
    return {"dtype": _dtype(flow.dtype), "n_timesteps": cfg.n_timesteps,
            "chunk_frames": list(flow.cfg.chunk_sizes), "batch_decoder": cfg.batch_decoder,
            "overlap_decoder": cfg.overlap_decoder, "dit_slots": pool,
            "backends": {stage: cfg.backends.get(stage, "torch") for stage in ("dit", "flow_encoder", "hift")}}


def _front_end(rt) -> dict:
    comp, cfg = rt.components, rt.config
    return {"vq02": rt.config.backends.get("vq02", "torch"),
            "vq06": _onnx(comp.vq06.graph), "campplus": _onnx(comp.speaker.graph),
            "vq02_dither": cfg.vq02_dither}


def _onnx(graph) -> dict:
    session = getattr(graph, "session", None)
    if session is None:
        return {"runtime": type(graph).__name__}
    options = session.get_session_options()
    return {"runtime": "onnxruntime", "providers": session.get_providers(),
            "intra_op_threads": options.intra_op_num_threads}


def _kernels(device: torch.device, decoder_dtype: torch.dtype) -> dict:
    """Per fused op: the process-wide setting, and what "auto" runs for calls whose shapes the kernel
    takes (Triton on CUDA when it can launch there; the PyTorch reference otherwise; fp32 DiT
    attention stays on SDPA, where the kernel measured slower)."""
    from .kernels._triton import HAS_TRITON

    on_cuda = device.type == "cuda" and HAS_TRITON
    out = {}
    for op in OPS:
        setting = get_kernel_backend(op)
        auto = on_cuda and not (op == "dit_attention" and dit_kernel_slower(decoder_dtype))
        runs = {"reference": "reference", "triton": "triton"}.get(setting, "triton" if auto else "reference")
        out[op] = {"setting": setting, "runs": runs}
    return out


def _version(distribution: str):
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _gpus() -> list[dict]:
    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        out.append({"index": i, "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                    "compute_capability": f"{props.major}.{props.minor}"})
    return out


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def _dtype(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
