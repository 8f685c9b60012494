"""A shared dummy:tiny runtime for API tests (building one takes a few seconds)."""
from pathlib import Path

import pytest

import speech_clips
from editx import Runtime

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
    return speech_clips.require()
