"""Token reshaping and id checks of the flow decoder (no fixtures needed)."""
from __future__ import annotations

import pytest
import torch

from editx.errors import InvalidInputError
from editx.models.flow import check_pair_ids, mixed_len, reshape_mixed_tokens


def reference_reshape(mixed: list[int]) -> list[tuple[int, int]]:
    """Spec §5.4 spelled out with Python lists: pad, then (a, c+1), (b, d+1), (1024, e+1) per group."""
    seq = list(mixed)
    if len(seq) % 5:
        seq += [0, 0, 0, 1024, 1024, 1024][-(5 - len(seq) % 5):]
    out = []
    for g in range(0, len(seq), 5):
        a, b, c, d, e = seq[g:g + 5]
        out += [(a, c + 1), (b, d + 1), (1024, e + 1)]
    return out


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 9, 10, 17, 31])
def test_reshape_matches_spec_rule_for_every_ragged_length(n):
    g = torch.Generator().manual_seed(n)
    vq02 = torch.randint(0, 1024, (n,), generator=g)
    vq06 = torch.randint(1024, 5120, (n,), generator=g)
    # a realistic mixed stream: positions 0,1 of a group are vq02, 2..4 are 1024 + vq06
    mixed = torch.where(torch.arange(n) % 5 < 2, vq02, vq06)
    got = reshape_mixed_tokens(mixed)
    assert got.dtype == torch.int64
    assert got.tolist() == [list(p) for p in reference_reshape(mixed.tolist())]
    assert got.shape == (3 * ((n + 4) // 5), 2)


def test_reshape_batch_equals_rows():
    mixed = torch.randint(0, 5120, (3, 13), generator=torch.Generator().manual_seed(0))
    batch = reshape_mixed_tokens(mixed)
    assert batch.shape == (3, 9, 2)
    for row in range(3):
        assert torch.equal(batch[row], reshape_mixed_tokens(mixed[row]))


def test_reshape_accepts_lists_and_int32():
    assert reshape_mixed_tokens([1, 2, 1030, 1031, 1032]).tolist() == [[1, 1031], [2, 1032], [1024, 1033]]
    assert torch.equal(reshape_mixed_tokens(torch.tensor([5, 6, 1024], dtype=torch.int32)),
                       reshape_mixed_tokens(torch.tensor([5, 6, 1024])))


@pytest.mark.parametrize("bad", [torch.zeros(0, dtype=torch.long), torch.zeros(2, 0, dtype=torch.long),
                                 torch.zeros(1, 2, 5, dtype=torch.long), torch.zeros(5)])
def test_reshape_rejects_bad_input(bad):
    with pytest.raises(InvalidInputError, match="mixed tokens"):
        reshape_mixed_tokens(bad)


def test_mixed_len_rounds_down_to_whole_groups():
    assert [mixed_len(f) for f in (3, 15, 16, 17, 24, 48, 2)] == [5, 25, 25, 25, 40, 80, 0]


def test_check_pair_ids_rejects_out_of_range_ids():
    pairs = torch.tensor([[[3, 1030], [1024, 5121]]])
    with pytest.raises(InvalidInputError, match="token id 5121 is out of range"):
        check_pair_ids(pairs, 5121, "token_pairs", allow_negative=True)


def test_check_pair_ids_negative_only_where_allowed():
    pairs = torch.tensor([[[-3, 1030]]])
    check_pair_ids(pairs, 5121, "token_pairs", allow_negative=True)
    with pytest.raises(InvalidInputError, match="negative token id -3"):
        check_pair_ids(pairs, 5121, "pairs", allow_negative=False)


@pytest.mark.parametrize("bad", [torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 0, 2, dtype=torch.long),
                                 torch.zeros(1, 3, 2)])
def test_check_pair_ids_rejects_bad_shapes_and_dtypes(bad):
    with pytest.raises(InvalidInputError, match="token_pairs"):
        check_pair_ids(bad, 5121, "token_pairs", allow_negative=True)
