"""Fixtures of the server tests: each test module gets its own dummy:tiny Runtime (seed 0)."""
from __future__ import annotations

import pytest

from editx import Runtime


@pytest.fixture(scope="module")
def rt():
    runtime = Runtime.from_pretrained("dummy:tiny", seed=0)
    yield runtime
    runtime.close()
