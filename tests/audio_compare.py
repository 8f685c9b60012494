"""Comparing two renderings of the same tokens (concurrent vs sequential runs)."""
import numpy as np


def assert_same_result(got, want):
    """Concurrent vs sequential: token ids are identical (asserted by the callers where they have
    them); audio equal up to floating-point reduction order. Batched decoding reorders sums in the
    flow (measured mel differences <= 1e-6) and the NSF source integrates f0 over each chunk, so on
    the saturating random-weight vocoder single samples move by up to ~5e-3 while the relative RMS
    difference stays ~2.5e-4 (measured); 2e-3 / 0.02 leave margin and still catch any misrouted
    chunk (which is O(1))."""
    assert got.shape == want.shape
    diff = np.abs(got - want)
    rel_rms = float(np.sqrt((diff ** 2).mean() / max((want ** 2).mean(), 1e-12)))
    assert rel_rms <= 2e-3 and float(diff.max()) <= 0.02, (rel_rms, float(diff.max()))
