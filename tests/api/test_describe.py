"""`Runtime.describe()` / `editx.describe`: the effective settings reported match what the runtime holds."""
from __future__ import annotations

import json

import torch

from editx import Runtime
from editx.describe import _kernels, environment
from editx.layers import kernel_backend
from editx.layers.backend import OPS
from editx.models.flow.dit_slots import DiTSlots


def test_describe_reports_the_pool_kv_and_front_end_the_runtime_holds():
    with Runtime.from_pretrained("dummy:tiny", decoder_slots=2, max_num_seqs=5, onnx_threads=1,
                                 decoder_dtype="float32") as rt:
        info = rt.describe()
        json.dumps(info)  # plain values only
        pool = info["decoder"]["dit_slots"]
        slots = rt.decoder.slots
        assert (pool["streams"], pool["free"], pool["mode"]) == (2, 2, "static")
        # from the flow config, not the pool's tensors: 2 streams + the scratch slot, 10 s of prompt each
        per_stream = DiTSlots.stream_bytes(rt.components.flow, rt.config.n_timesteps, slots.prompt_capacity)
        assert pool["bytes"] == 3 * per_stream and pool["graph_error"] is None
        kv = info["kv_cache"]
        engine = rt._streamer.engine
        # what is allocated: fp32 K and V, incl. the engine's scratch block past the scheduler's blocks
        assert kv["max_num_seqs"] == 5 and kv["bytes"] == engine.cache.k.numel() * 2 * 4
        assert engine.cache.k.shape[1] == kv["blocks"] + 1
        assert info["llm"]["parameters"] == sum(p.numel() for p in rt.components.llm.parameters())
        assert info["front_end"]["vq06"]["providers"] == ["CPUExecutionProvider"]
        assert info["front_end"]["campplus"]["intra_op_threads"] == 1
        assert info["llm"]["audio_only_logits"] is True and info["voice_cache"]["voices"] == 0


def test_kernel_report_follows_the_auto_rules_and_forced_settings():
    cuda = torch.device("cuda")  # only a device name: nothing is launched
    on_gpu = _kernels(cuda, torch.bfloat16)
    assert all(on_gpu[op]["runs"] == "triton" for op in OPS)
    # fp32 DiT attention stays on SDPA under "auto" (the kernel measured slower there)
    assert _kernels(cuda, torch.float32)["dit_attention"]["runs"] == "reference"
    assert all(v["runs"] == "reference" for v in _kernels(torch.device("cpu"), torch.bfloat16).values())
    with kernel_backend("reference", "rms_norm"):
        forced = _kernels(cuda, torch.bfloat16)
        assert forced["rms_norm"] == {"setting": "reference", "runs": "reference"}
        assert forced["swiglu"]["runs"] == "triton"


def test_environment_lists_versions_and_providers():
    env = environment()
    assert env["packages"]["torch"] == torch.__version__.split("+")[0] or env["packages"]["torch"] == torch.__version__
    assert "CPUExecutionProvider" in env["onnxruntime_providers"]
    assert env["cuda_available"] == torch.cuda.is_available() and len(env["gpus"]) == torch.cuda.device_count()
