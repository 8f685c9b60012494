"""Where the tests find the real speech clips: $EDITX_AUDIO, default ../shared/audio beside the repo
(gpu_check.sh points it at its carried copy)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

AUDIO = Path(os.environ.get("EDITX_AUDIO", Path(__file__).resolve().parents[1].parent / "shared" / "audio"))
PROMPT = AUDIO / "zero_shot_en_prompt.wav"


def require(name: str = PROMPT.name) -> Path:
    """The clip's path, or skip the calling test when the clips are not there."""
    path = AUDIO / name
    if not path.is_file():
        pytest.skip(f"speech clip {path} not found (set EDITX_AUDIO or put ../shared/audio beside the repo)")
    return path
