"""Shared fixtures for streaming-engine tests (device and clips: engine_testing.py)."""
import pytest
from engine_testing import AUDIO, VOICES, make_runtime


@pytest.fixture(scope="module", params=[False, True], ids=["inline-decoder", "overlapped-decoder"])
def rt(request):
    """Every engine test runs with decoder items inside the engine step and on the decoder worker."""
    runtime = make_runtime(seed=0, overlap_decoder=request.param)
    yield runtime
    runtime.close()


@pytest.fixture(scope="module")
def voices():
    paths = [AUDIO / v for v in VOICES]
    if not all(p.is_file() for p in paths):
        pytest.skip(f"speech clips not found ({AUDIO})")
    return paths
