"""The flow encoder's streaming path vs its whole-sequence reference, and rel_shift vs upstream's trick."""
from __future__ import annotations

import pytest
import torch

from editx.errors import InvalidInputError
from editx.models.flow import FlowEncoderConfig, UpsampleConformerEncoderV2
from editx.models.flow.embedding import rel_position_table
from editx.models.flow.encoder import rel_shift
from random_weights import fill_random_

# fp32 results of different but equivalent op orders (masked softmax over all keys vs
# softmax over the cached+chunk keys) differ by a few ulps per layer; values are O(1).
ATOL = 2e-5


def make_encoder(seed: int = 0, **kw) -> UpsampleConformerEncoderV2:
    cfg = FlowEncoderConfig(**{**dict(input_size=24, output_size=24, attention_heads=3, linear_units=40,
                                      num_blocks=2, num_up_blocks=2), **kw})
    return fill_random_(UpsampleConformerEncoderV2(cfg), seed)


def upstream_style_rel_shift(x: torch.Tensor) -> torch.Tensor:
    """The Transformer-XL pad/reshape shift as upstream runs it (written out here as the reference)."""
    b, h, tq, length = x.shape
    padded = torch.cat([x.new_zeros(b, h, tq, 1), x], dim=-1).view(b, h, length + 1, tq)
    return padded[:, :, 1:].reshape(b, h, tq, length)[:, :, :, : length // 2 + 1]


@pytest.mark.parametrize("tq,tk", [(1, 1), (5, 5), (7, 7), (3, 11), (1, 9), (6, 13)])
def test_rel_shift_equals_pad_reshape_trick(tq, tk):
    x = torch.randn(2, 3, tq, 2 * tk - 1)
    assert torch.equal(rel_shift(x, tk), upstream_style_rel_shift(x))


@pytest.mark.parametrize("prompt,chunks,last", [
    (7, [6, 3], 5),      # odd prompt, chunks of 6/3 frames, ragged last chunk
    (4, [15], 3),        # one long chunk, flush of just the lookahead frames
    (9, [], 4),          # setup then flush only
])
def test_forward_chunk_equals_block_causal_full_pass(prompt, chunks, last):
    enc = make_encoder(seed=prompt)
    L = enc.pre_lookahead_len
    total = prompt + sum(chunks) + last
    xs = torch.randn(1, total, 24, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = enc(xs, block_sizes=[prompt, *chunks, last])  # [1, 2*total, D]
        outs, cache, start = [], None, 0
        for size in [prompt, *chunks]:
            h, cache = enc.forward_chunk(xs[:, start:start + size + L], cache, last=False)
            assert h.shape[1] == 2 * size
            outs.append(h)
            start += size
        h, cache = enc.forward_chunk(xs[:, start:], cache, last=True)
        outs.append(h)
    assert cache.frames == total
    assert cache.up_k.shape[3] == 2 * total
    got = torch.cat(outs, dim=1)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


def test_one_block_full_pass_is_the_plain_forward():
    enc = make_encoder(seed=3)
    xs = torch.randn(2, 11, 24)
    with torch.no_grad():
        torch.testing.assert_close(enc(xs, block_sizes=[11]), enc(xs), atol=1e-6, rtol=0)


def test_key_padding_mask_equals_attention_over_the_valid_prefix():
    # Relative positions make the valid queries' result independent of the table length.
    layer = make_encoder(seed=4).encoders[0].self_attn
    x = torch.randn(1, 12, 24)
    with torch.no_grad():
        masked, _, _ = layer(x, rel_position_table(12, 24, x.dtype, x.device), torch.arange(12)[None, None] < 10)
        prefix, _, _ = layer(x[:, :10], rel_position_table(10, 24, x.dtype, x.device), None)
    torch.testing.assert_close(masked[:, :10], prefix, atol=1e-6, rtol=0)


def test_block_sizes_must_cover_the_sequence():
    enc = make_encoder()
    with pytest.raises(InvalidInputError, match="block_sizes"):
        enc(torch.randn(1, 8, 24), block_sizes=[3, 4])
