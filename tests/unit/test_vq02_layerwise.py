"""vq02 encoder run layer by layer over all calls (`encode`) vs upstream's call-by-call loop
(`encode_chunked`, itself checked against a float64 reference in test_vq02_encoder.py)."""
from __future__ import annotations

import pytest
import torch

from editx.models.vq02 import SANMEncoderConfig, kmeans_codes
from editx.models.vq02_layerwise import CallLayout
from test_vq02_encoder import SMALL, _encoder, _feats

# Both paths run fp32 with the same rows and keys; only matmul shapes (so summation order)
# differ. Measured max |diff| <= 6e-7 on LayerNorm-ed outputs of ~unit scale over these cases;
# 1e-5 leaves headroom and is ~1000x below what a wrong cache row or a leaked padding row
# moves (>= 1e-2, see the float64 reference's sensitivity guard).
FP32_ATOL = 1e-5


def _random_lengths(seed: int, calls: int, longest: int = 7) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, longest + 1, (calls,), generator=g).tolist()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    "variant",
    [{}, {"encoder_chunk_look_back": -1}, {"encoder_chunk_look_back": 0},
     {"chunk_size": (2, 3, 4), "encoder_chunk_look_back": 2}, {"chunk_size": (0, 5, 1), "encoder_chunk_look_back": 3}],
    ids=["upstream", "unbounded_cache", "no_cache", "left_context", "one_overlap_row"],
)
def test_layerwise_equals_call_by_call_on_random_chunkings(seed, variant):
    lengths = _random_lengths(seed, calls=3 + 4 * seed)
    enc = _encoder(SANMEncoderConfig(**SMALL, **variant), seed=seed)
    feats = _feats(3, sum(lengths), seed=10 + seed)  # B=3 equal-length utterances
    ref = enc.encode_chunked(feats, lengths)
    got = enc.encode(feats, lengths)
    assert got.shape == ref.shape == (3, sum(lengths), SMALL["output_size"])
    err = (got - ref).abs().max().item()
    assert err <= FP32_ATOL, f"max |layerwise - call by call| = {err:.3g} for lengths {lengths}"


def test_single_call_and_single_frame():
    enc = _encoder(SANMEncoderConfig(**SMALL))
    for lengths in ([1], [9], [1, 1, 1]):
        feats = _feats(1, sum(lengths), seed=sum(lengths))
        torch.testing.assert_close(enc.encode(feats, lengths), enc.encode_chunked(feats, lengths),
                                   atol=FP32_ATOL, rtol=0)


@pytest.mark.parametrize(
    "lengths,keep,expected",
    [
        # upstream: 4 new cached rows per call (9-row blocks minus the 5 overlap rows), capped at 16
        ([4, 4, 4, 4, 4, 4], 16, [0, 4, 8, 12, 16, 16]),
        # the first call's 20 rows stay untruncated for call 2, then the cap applies
        ([20, 3, 4, 1], 16, [0, 20, 16, 16]),
        ([3, 3, 3], None, [0, 3, 6]),
        ([3, 3, 3], 0, [0, 0, 0]),
    ],
)
def test_layout_cache_sizes_follow_upstream_rule(lengths, keep, expected):
    look_back = -1 if keep is None else keep // 4
    layout = CallLayout.plan(lengths, SANMEncoderConfig(**SMALL, encoder_chunk_look_back=look_back), "cpu")
    assert layout.cache_valid.sum(1).tolist() == expected
    assert layout.row_valid.sum(1).tolist() == [5 + t for t in lengths]
    assert layout.out_rows.numel() == sum(lengths)


def test_cache_rows_are_the_latest_earlier_rows():
    """Call 5 of six 4-frame calls caches calls 1-4's first 4 rows (16 frames), never its own."""
    lengths = [4] * 6
    layout = CallLayout.plan(lengths, SANMEncoderConfig(**SMALL), "cpu")
    width = layout.rows
    cached = layout.cache_index[5][layout.cache_valid[5]].tolist()
    assert cached == [call * width + r for call in range(1, 5) for r in range(4)]


def test_export_backend_view_runs_the_calls_through_its_forward_chunk():
    """An export backend replaces `forward_chunk` on a view; `encode` must then run the calls one by one."""
    from editx.export.backends import method_view

    enc = _encoder(SANMEncoderConfig(**SMALL))
    calls = []

    def counting_forward_chunk(feats_chunk, state):
        calls.append(feats_chunk.shape[1])
        return enc.forward_chunk(feats_chunk, state)

    view = method_view(enc, "forward_chunk", counting_forward_chunk)
    lengths = [4, 4, 3, 1]
    feats = _feats(1, sum(lengths))
    out = view.encode(feats, lengths)
    assert calls == lengths
    torch.testing.assert_close(out, enc.encode_chunked(feats, lengths), atol=0, rtol=0)


def test_codes_agree_where_the_nearest_centroid_is_clear():
    """k-means codes from both paths agree wherever the two nearest centroids are further apart
    than 100x the paths' output difference (a closer tie may flip on summation order alone)."""
    enc = _encoder(SANMEncoderConfig(**SMALL), seed=7)
    lengths = [4] * 20 + [3]
    feats = _feats(1, sum(lengths), seed=8)
    centroids = torch.randn(64, SMALL["output_size"], generator=torch.Generator().manual_seed(9))
    ref = enc.encode_chunked(feats, lengths)
    got = enc.encode(feats, lengths)
    ref_codes, top2 = kmeans_codes(ref, centroids)
    got_codes, _ = kmeans_codes(got, centroids)
    clear = (top2[..., 1] - top2[..., 0]) > 100 * (got - ref).abs().max()
    assert clear.float().mean() > 0.9
    assert torch.equal(got_codes[clear], ref_codes[clear])
