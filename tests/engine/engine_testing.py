"""Where the streaming-engine tests run (dummy:tiny, short outputs).

EDITX_TEST_DEVICE=cuda runs the same tests on a GPU (benchmarks/gpu_check.sh does), where the
decode steps replay CUDA graphs and the kernels are Triton's; the LLM stays fp32 there so the
tolerances in test_streaming.py keep their meaning. EDITX_AUDIO points at the speech clips (default ../shared/audio; `speech_clips`).
"""
import os
import time

import speech_clips
from editx import Runtime

AUDIO = speech_clips.AUDIO
VOICES = ["zero_shot_en_prompt.wav", "fear_zh_female_prompt.wav", "vad_prompt.wav"]
DEVICE = os.environ.get("EDITX_TEST_DEVICE", "cpu")


def make_runtime(**overrides) -> Runtime:
    """A dummy:tiny Runtime on the test device (fp32 LLM everywhere)."""
    return Runtime.from_pretrained("dummy:tiny", device=DEVICE, dtype="float32", **overrides)


def wait_idle(rt, timeout: float = 60.0) -> dict:
    """The engine stats once no request is active and no KV block is used (fails after `timeout` s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = rt.engine_stats()
        if stats["active_requests"] == 0 and stats["used_blocks"] == 0:
            return stats
        time.sleep(0.05)
    raise AssertionError(f"engine did not go idle: {rt.engine_stats()}")
