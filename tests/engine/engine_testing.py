"""Where the streaming-engine tests run (dummy:tiny, short outputs).

EDITX_TEST_DEVICE=cuda runs the same tests on a GPU (benchmarks/gpu_check.sh does), where the
decode steps replay CUDA graphs and the kernels are Triton's; the LLM stays fp32 there so the
tolerances in test_streaming.py keep their meaning. EDITX_AUDIO points at the speech clips (default ../shared/audio; `speech_clips`).
"""
import os

import speech_clips
from editx import Runtime

AUDIO = speech_clips.AUDIO
VOICES = ["zero_shot_en_prompt.wav", "fear_zh_female_prompt.wav", "vad_prompt.wav"]
DEVICE = os.environ.get("EDITX_TEST_DEVICE", "cpu")


def make_runtime(**overrides) -> Runtime:
    """A dummy:tiny Runtime on the test device (fp32 LLM everywhere)."""
    return Runtime.from_pretrained("dummy:tiny", device=DEVICE, dtype="float32", **overrides)
