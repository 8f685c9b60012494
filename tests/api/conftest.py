"""A shared dummy:tiny runtime for API tests (building one takes a few seconds)."""
from pathlib import Path

import pytest

from editx import Runtime

AUDIO = Path(__file__).resolve().parents[2].parent / "shared" / "audio"
# Short outputs keep each request around a second on CPU (41.67 tokens = 1 s of audio).
MAX_NEW_TOKENS = 60


@pytest.fixture(scope="session")
def rt() -> Runtime:
    return Runtime.from_pretrained("dummy:tiny", seed=0)


@pytest.fixture(scope="session")
def sampling(rt):
    return rt.default_sampling(max_new_tokens=MAX_NEW_TOKENS)


@pytest.fixture(scope="session")
def prompt_wav() -> Path:
    path = AUDIO / "zero_shot_en_prompt.wav"
    if not path.is_file():
        pytest.skip(f"speech clip {path} not found (../shared/audio)")
    return path
