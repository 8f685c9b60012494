"""vq02 streaming front end: vectorised LFR/splice bookkeeping vs a literal per-piece loop, and am.mvn parsing."""
from __future__ import annotations

import math

import pytest
import torch

from editx.errors import CheckpointError, InvalidInputError
from editx.frontend import (
    Vq02FrontendConfig,
    Vq02FrontendState,
    extract_vq02_features,
    extract_vq02_piece,
    kaldi_fbank,
    stack_lfr,
)
from editx.loading.am_mvn import Cmvn, parse_am_mvn, read_am_mvn


def _reference(x: torch.Tensor, cmvn: Cmvn | None, piece: int, precision=torch.float64):
    """Upstream's loop as FunASR writes it (one LFR frame at a time), dither 0."""
    n = x.shape[0] // piece + 1
    carry = x[:0]
    splice = None
    chunks = []
    for i in range(n):
        final = i == n - 1
        seg = x[i * piece : (i + 1) * piece]
        if final and seg.shape[0] == 0:
            break
        buf = torch.cat([carry, seg])
        frames_n = (buf.shape[0] - 400) // 160 + 1 if buf.shape[0] >= 400 else 0
        carry = buf[frames_n * 160 :]
        if frames_n == 0:
            if not final or splice is None or splice.shape[0] <= 3:
                continue
            frames = splice
        else:
            fb = kaldi_fbank((buf * 32768).to(precision), 16000, 80, dither=0.0, window_type="hamming")
            if splice is None:
                splice = fb[:1].repeat(3, 1)
            if fb.shape[0] + splice.shape[0] < 7:
                splice = torch.cat([splice, fb])
                continue
            frames = torch.cat([splice, fb])
        t = frames.shape[0]
        out, stop = [], math.ceil((t - 3) / 6)
        for k in range(math.ceil((t - 3) / 6)):
            if 7 <= t - 6 * k:
                out.append(frames[6 * k : 6 * k + 7].reshape(-1))
            elif final:
                tail = [frames[6 * k :].reshape(-1)] + [frames[-1]] * (7 - (t - 6 * k))
                out.append(torch.cat(tail))
            else:
                stop = k
                break
        splice = frames[min(t - 1, stop * 6) :]
        if out:
            stacked = torch.stack(out)
            chunks.append(cmvn.apply(stacked) if cmvn is not None else stacked)
    if not chunks:
        return torch.zeros(1, 0, 560), []
    return torch.cat(chunks)[None].float(), [c.shape[0] for c in chunks]


def _random_cmvn(seed=0) -> Cmvn:
    g = torch.Generator().manual_seed(seed)
    return Cmvn(shift=-10 + torch.randn(560, generator=g), scale=0.2 + 0.1 * torch.rand(560, generator=g))


LENGTHS = [100, 399, 400, 479, 480, 3839, 3840, 3841, 3840 * 2 + 200, 3840 * 3 + 400, 3840 * 5 + 3001]


@pytest.mark.parametrize("n", LENGTHS)
def test_matches_literal_loop(n):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n)) * 0.1
    cmvn = _random_cmvn()
    got, lengths = extract_vq02_features(x, cmvn, dither=0.0)
    ref, ref_lengths = _reference(x, cmvn, 3840)
    assert lengths == ref_lengths and sum(lengths) == got.shape[1]
    assert got.shape == ref.shape and got.dtype == torch.float32
    assert torch.equal(got, ref)


@pytest.mark.parametrize("chunk", [(0, 1, 5), (0, 2, 5), (0, 10, 5)])
@pytest.mark.parametrize("n", [1000, 5000, 12345])
def test_other_piece_sizes(chunk, n):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n)) * 0.1
    cfg = Vq02FrontendConfig(chunk_size=chunk)
    got, lengths = extract_vq02_features(x, None, dither=0.0, config=cfg)
    ref, ref_lengths = _reference(x, None, chunk[1] * 960)
    assert lengths == ref_lengths and torch.equal(got, ref)


def test_full_pieces_emit_four_frames_each():
    x = torch.randn(3840 * 6 + 2000) * 0.1
    _, lengths = extract_vq02_features(x, None, dither=0.0)
    assert lengths[:6] == [4] * 6 and len(lengths) == 7


# Odd lengths: a final piece shorter than one frame (flush), a last piece of exactly one frame, whole
# pieces only, one piece, one sample over a piece.
@pytest.mark.parametrize("n", [3840 * 3 + 1234, 3840 * 2 + 250, 3840 + 400, 3840 * 5, 2999, 3841])
@pytest.mark.parametrize("dither", [0.0, 1.0])
def test_piece_api_equals_whole_utterance(n, dither):
    """The whole-utterance function and the streaming step API driven piece by piece give the same
    features bit for bit, dither draws included (same generator seed)."""
    x = torch.randn(n, generator=torch.Generator().manual_seed(n)) * 0.1
    cmvn = _random_cmvn(1)
    whole, lengths = extract_vq02_features(x[None], cmvn, dither=dither, generator=torch.Generator().manual_seed(5))
    state, parts, gen = Vq02FrontendState(), [], torch.Generator().manual_seed(5)
    pieces = [x[i : i + 3840] for i in range(0, x.shape[0], 3840)]
    for i, p in enumerate(pieces):
        feats, state = extract_vq02_piece(p, state, cmvn, is_final=i == len(pieces) - 1, dither=dither, generator=gen)
        parts.append(feats)
    assert torch.equal(torch.cat(parts)[None], whole)
    assert lengths == [p.shape[0] for p in parts if p.shape[0]]


def test_float32_precision_is_upstream_arithmetic_and_close():
    x = torch.randn(9000) * 0.1
    a, _ = extract_vq02_features(x, None, dither=0.0, precision=torch.float32)
    b, _ = extract_vq02_features(x, None, dither=0.0)
    ref, _ = _reference(x, None, 3840, precision=torch.float32)
    assert torch.equal(a, ref) and (a - b).abs().max() < 1e-2


def test_dither_is_reproducible_with_a_generator():
    x = torch.randn(8000) * 0.1
    a, _ = extract_vq02_features(x, None, generator=torch.Generator().manual_seed(1))
    b, _ = extract_vq02_features(x, None, generator=torch.Generator().manual_seed(1))
    c, _ = extract_vq02_features(x, None, dither=0.0)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_too_short_utterance_gives_no_frames():
    feats, lengths = extract_vq02_features(torch.zeros(300), None, dither=0.0)
    assert feats.shape == (1, 0, 560) and lengths == []


def test_config_parsing_and_errors():
    conf = dict(fs=16000, window="hamming", n_mels=80, frame_length=25, frame_shift=10, lfr_m=7, lfr_n=6, dither=0.0)
    cfg = Vq02FrontendConfig.from_frontend_conf(conf)
    assert cfg == Vq02FrontendConfig.full() and cfg.piece_samples == 3840 and cfg.feature_dim == 560
    with pytest.raises(InvalidInputError, match="chunk_size"):
        Vq02FrontendConfig(chunk_size=(0, 0, 5))
    with pytest.raises(InvalidInputError, match="wav16k"):
        extract_vq02_features(torch.zeros(2, 5000), None)
    with pytest.raises(InvalidInputError, match="precision"):
        extract_vq02_features(torch.zeros(5000), None, precision=torch.float16)


# -- am.mvn ------------------------------------------------------------------------------------
def _mvn_text(shift, scale, dim=None):
    d = len(shift) if dim is None else dim
    vec = lambda v: " ".join(f"{x:.6f}" for x in v)  # noqa: E731
    return (
        f"<Nnet>\n<Splice> {d} {d}\n[ 0 ]\n<AddShift> {d} {d}\n<LearnRateCoef> 0 [ {vec(shift)} ]\n"
        f"<Rescale> {d} {d}\n<LearnRateCoef> 0 [ {vec(scale)} ]\n</Nnet>\n"
    )


def test_am_mvn_parses_and_applies(tmp_path):
    path = tmp_path / "am.mvn"
    path.write_text(_mvn_text([-1.0, -2.0, -3.0], [0.5, 0.25, 2.0]))
    cmvn = read_am_mvn(path)
    assert cmvn.dim == 3 and cmvn.shift.dtype == torch.float32
    x = torch.tensor([[1.0, 2.0, 3.0], [2.0, 2.0, 2.0]])
    assert torch.equal(cmvn.apply(x), torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, -2.0]]))
    assert torch.equal(cmvn.apply(x[:, :2]), torch.tensor([[0.0, 0.0], [0.5, 0.0]]))  # first D' dims, as upstream
    wrapped = _mvn_text([-1.0, -2.0, -3.0], [0.5, 0.25, 2.0]).replace(" -2.000000", "\n-2.000000")
    assert torch.equal(parse_am_mvn(wrapped).shift, cmvn.shift)
    with pytest.raises(InvalidInputError, match="exceeds"):
        cmvn.apply(torch.zeros(1, 4))


@pytest.mark.parametrize(
    "text,match",
    [
        ("<Nnet>\n<Rescale> 2 2\n<LearnRateCoef> 0 [ 1 1 ]\n</Nnet>", "no <AddShift>"),
        (_mvn_text([1, 2], [1, 2, 3], dim=2).replace("<Rescale> 2 2", "<Rescale> 3 3"), "2 values but <Rescale> has 3"),
        (_mvn_text([1, 2], [1, 2], dim=3), "declares 3 values"),
        (_mvn_text([1, 2], [1, 2]).replace("2.000000 ]", "abc ]", 1), "non-number"),
        (_mvn_text([1, 2], [1, 2]).replace("2.000000 ]", "nan ]", 1), "NaN or Inf"),
        ("<AddShift> 2 2\n<LearnRateCoef> 0 1 2\n<Rescale> 2 2\n", "bracketed"),
        ("<AddShift> 0 0\n<LearnRateCoef> 0 [ ]\n<Rescale> 0 0\n<LearnRateCoef> 0 [ ]", "empty"),
    ],
)
def test_am_mvn_malformed(text, match):
    with pytest.raises(CheckpointError, match=match):
        parse_am_mvn(text)


def test_am_mvn_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="missing CMVN"):
        read_am_mvn(tmp_path / "am.mvn")


def test_stack_lfr_by_hand():
    frames = torch.arange(20.0).reshape(10, 2)  # 10 frames of 2 dims
    stacked, held = stack_lfr(frames, 7, 6, is_final=False)
    assert torch.equal(stacked, frames[:7].reshape(1, 14))  # the 2nd window (frames 6..12) is incomplete
    assert torch.equal(held, frames[6:])
    stacked, _ = stack_lfr(frames, 7, 6, is_final=True)
    last = torch.cat([frames[6:], frames[9:].repeat(3, 1)]).reshape(14)  # padded with the last frame
    assert torch.equal(stacked, torch.stack([frames[:7].reshape(14), last]))


def test_final_piece_without_new_frames_flushes_the_splice_cache():
    splice = torch.randn(5, 80, dtype=torch.float64)
    state = Vq02FrontendState(sample_cache=torch.zeros(0), splice_cache=splice)
    feats, _ = extract_vq02_piece(torch.zeros(100), state, None, is_final=True, dither=0.0)
    expected = torch.cat([splice, splice[-1:].repeat(2, 1)]).reshape(1, 560).float()
    assert torch.equal(feats, expected)
    nothing, _ = extract_vq02_piece(torch.zeros(100), state, None, is_final=False, dither=0.0)
    assert nothing.shape == (0, 560)
