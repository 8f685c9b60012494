"""Shared fixtures for streaming-engine tests (dummy:tiny, short outputs)."""
from pathlib import Path

import pytest

from editx import Runtime

AUDIO = Path(__file__).resolve().parents[2].parent / "shared" / "audio"
VOICES = ["zero_shot_en_prompt.wav", "fear_zh_female_prompt.wav", "vad_prompt.wav"]


@pytest.fixture(scope="module")
def rt():
    runtime = Runtime.from_pretrained("dummy:tiny", seed=0)
    yield runtime
    runtime.close()


@pytest.fixture(scope="module")
def voices():
    paths = [AUDIO / v for v in VOICES]
    if not all(p.is_file() for p in paths):
        pytest.skip("speech clips not found (../shared/audio)")
    return paths
