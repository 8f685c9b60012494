"""vq02 k-means: float64 blocked distances vs brute force, tie/near-tie robustness, errors."""
from __future__ import annotations

import pytest
import torch

from editx.errors import InvalidInputError
from editx.models import vq02
from editx.models.vq02 import kmeans_codes


def _brute_force(x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: explicit float64 differences, sorted (no |x|^2 + |c|^2 - 2xc expansion)."""
    diff = x.double()[:, :, None, :] - c.double()[None, None, :, :]  # [B, N, K, D]
    dist = diff.pow(2).sum(-1).sqrt()  # [B, N, K]
    values, index = dist.sort(dim=-1, stable=True)
    return index[..., 0], values[..., :2]


@pytest.mark.parametrize("shape", [(1, 37, 24), (3, 5, 7)])
def test_matches_brute_force(shape):
    g = torch.Generator().manual_seed(0)
    b, n, d = shape
    centroids = torch.randn(50, d, generator=g) * 3
    x = torch.randn(b, n, d, generator=g) * 3
    codes, top2 = kmeans_codes(x, centroids)
    ref_codes, ref_top2 = _brute_force(x, centroids)
    assert codes.dtype == torch.int64 and codes.shape == (b, n)
    assert top2.dtype == torch.float32 and top2.shape == (b, n, 2)
    assert torch.equal(codes, ref_codes)
    # float32 output rounding of distances ~10: 1 ulp ~ 1e-6.
    torch.testing.assert_close(top2.double(), ref_top2, atol=2e-6, rtol=0)


def test_blocking_does_not_change_results(monkeypatch):
    g = torch.Generator().manual_seed(1)
    centroids = torch.randn(33, 16, generator=g)
    x = torch.randn(2, 41, 16, generator=g)
    whole = kmeans_codes(x, centroids)
    monkeypatch.setattr(vq02, "_DISTANCE_BLOCK_ROWS", 7)
    blocked = kmeans_codes(x, centroids)
    assert torch.equal(whole[0], blocked[0]) and torch.equal(whole[1], blocked[1])


def test_near_ties_resolved_like_exact_distances():
    """Points whose top-1/top-2 margin (~1e-5) is below fp32 cdist noise at this scale."""
    g = torch.Generator().manual_seed(2)
    centroids = torch.randn(64, 512, generator=g) * 0.05
    a, b = centroids[3], centroids[9]
    mid = (a + b) / 2
    direction = (a - b) / (a - b).norm()
    x = torch.stack([mid + 1e-5 * direction, mid - 1e-5 * direction])[None]  # [1, 2, 512]
    codes, top2 = kmeans_codes(x, centroids)
    ref_codes, _ = _brute_force(x, centroids)
    assert codes.tolist() == ref_codes.tolist() == [[3, 9]]
    assert (top2[..., 0] <= top2[..., 1]).all()


def test_point_on_a_centroid_has_distance_zero():
    centroids = torch.randn(10, 8, generator=torch.Generator().manual_seed(3)) * 100
    codes, top2 = kmeans_codes(centroids[None, [4, 7]], centroids)
    assert codes.tolist() == [[4, 7]]
    assert top2[..., 0].abs().max() < 1e-4  # clamped at 0, sqrt of float64 rounding


def test_low_precision_input_and_centroids():
    g = torch.Generator().manual_seed(4)
    centroids = torch.randn(20, 12, generator=g)
    x = torch.randn(1, 9, 12, generator=g).bfloat16()
    codes, top2 = kmeans_codes(x, centroids.half())
    ref_codes, _ = _brute_force(x.float(), centroids.half().float())
    assert torch.equal(codes, ref_codes) and top2.dtype == torch.float32


def test_rejects_bad_inputs():
    c = torch.randn(8, 4)
    with pytest.raises(InvalidInputError, match="enc_out"):
        kmeans_codes(torch.randn(5, 4), c)
    with pytest.raises(InvalidInputError, match="width 5 does not match"):
        kmeans_codes(torch.randn(1, 5, 5), c)
    with pytest.raises(InvalidInputError, match="at least 2 centroids"):
        kmeans_codes(torch.randn(1, 5, 4), c[:1])
    with pytest.raises(InvalidInputError, match="centroids"):
        kmeans_codes(torch.randn(1, 5, 4), c.long())
    bad = torch.randn(1, 5, 4)
    bad[0, 2, 1] = float("nan")
    with pytest.raises(InvalidInputError, match="NaN"):
        kmeans_codes(bad, c)
