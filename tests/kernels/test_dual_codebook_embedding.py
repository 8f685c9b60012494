"""Fused dual-codebook embedding (mixed ids → pairs → gather → concat) vs the model's reshape + embedding."""
from __future__ import annotations

import random

import pytest
import torch

from editx.errors import InvalidInputError
from editx.kernels import dual_codebook_embedding as K
from editx.layers import kernel_backend
from editx.layers.embedding import dual_codebook_embedding, embed_mixed, embed_mixed_sequences
from editx.models.flow.embedding import DualCodebookEmbedding
from editx.models.flow.tokens import reshape_mixed_tokens
from kernel_testing import DEVICE, DTYPES, big, needs_kernels

pytestmark = needs_kernels
VOCAB = 5121  # 1024 vq02 + pad + 4096 vq06 (spec §5.4); the table width is a parameter
# A gather copies table rows: every dtype must match the reference exactly.


def _mixed(n: int, rng: random.Random) -> torch.Tensor:
    """n valid mixed ids: per group two vq02 codes (0..1023) then three vq06 codes (1024..5119)."""
    return torch.tensor([rng.randrange(1024) if i % 5 < 2 else 1024 + rng.randrange(4096) for i in range(n)])


def _model_embedding(table: torch.Tensor) -> DualCodebookEmbedding:
    module = DualCodebookEmbedding(table.shape[0], 2 * table.shape[1])
    module.embedding.weight.data = table
    return module


def _expected(seq: torch.Tensor, table: torch.Tensor, clamp: bool = False) -> torch.Tensor:
    """The model's path on the CPU reference: reshape_mixed_tokens + DualCodebookEmbedding."""
    pairs = reshape_mixed_tokens(seq.cpu())
    pairs = pairs.clamp(min=0) if clamp else pairs
    with kernel_backend("reference"):
        return _model_embedding(table.cpu())(pairs[None])[0]


def _pack(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    cu = [0]
    for s in seqs:
        cu.append(cu[-1] + s.numel())
    return torch.cat(seqs).to(DEVICE), torch.tensor(cu, dtype=torch.int32, device=DEVICE)


@pytest.mark.parametrize("dtype,half", [(torch.float32, 100), (torch.bfloat16, 32), (torch.float16, 256)])
def test_ragged_batch_matches_model_reshape_and_embedding(dtype, half):
    rng = random.Random(half)
    lengths = [1, 3, 7, 111, big(304, 1203), 10]  # ragged tails of every size 0..4
    seqs = [_mixed(n, rng) for n in lengths]
    table = torch.randn(VOCAB, half).to(DEVICE, dtype)
    ids, cu = _pack(seqs)
    groups = max(-(-n // 5) for n in lengths)
    out = torch.full((len(seqs), 3 * groups, 2 * half), 7.0, dtype=dtype, device=DEVICE)
    offsets = torch.arange(len(seqs), device=DEVICE) * out.stride(0)
    K.mixed_embedding(ids, cu, table, out, offsets, groups)
    for s, seq in enumerate(seqs):
        frames = 3 * -(-seq.numel() // 5)
        torch.testing.assert_close(out[s, :frames].cpu(), _expected(seq, table), rtol=0, atol=0)
        assert (out[s, frames:] == 7.0).all(), "frames after a sequence must be left untouched"


def test_llm_ids_with_offset_and_clamped_negatives():
    rng = random.Random(1)
    seq = _mixed(13, rng)
    seq[3] = -5  # a negative vq06 id: upstream's non-streaming path clamps the pair at 0
    table = torch.randn(VOCAB, 16, device=DEVICE)
    ids, cu = _pack([seq + 65536])
    out = torch.zeros(1, 9, 32, device=DEVICE)
    K.mixed_embedding(ids, cu, table, out, torch.zeros(1, dtype=torch.int64, device=DEVICE), 3,
                      id_offset=65536, clamp=True)
    torch.testing.assert_close(out[0].cpu(), _expected(seq, table, clamp=True), rtol=0, atol=0)


def test_prompt_and_target_written_into_one_encoder_buffer():
    """Two id streams (prompt, target; each padded on its own as upstream) into the same row."""
    rng = random.Random(2)
    prompt, target = _mixed(12, rng), _mixed(8, rng)
    table = torch.randn(VOCAB, 16, device=DEVICE)
    buf = torch.zeros(3, 20, 32, device=DEVICE)  # a bigger buffer: write into row 1
    ids, cu = _pack([prompt, target])
    offsets = torch.tensor([buf.stride(0), buf.stride(0) + 9 * buf.stride(1)], device=DEVICE)
    K.mixed_embedding(ids, cu, table, buf, offsets, 3)
    want = torch.cat([_expected(prompt, table), _expected(target, table)])
    torch.testing.assert_close(buf[1, :15].cpu(), want, rtol=0, atol=0)
    assert (buf[0] == 0).all() and (buf[2] == 0).all() and (buf[1, 15:] == 0).all()


@pytest.mark.parametrize("chunks", [[5, 25, 40, 3], [1, 1, 7, 2, 11], [4, 9, 6]])
def test_streaming_append_rewrites_only_the_touched_groups(chunks):
    """Session buffers grow chunk by chunk (sizes not multiples of 5): after each append the
    buffer equals the offline embedding of every id so far (an incomplete group is padded,
    then re-embedded when its missing ids arrive)."""
    rng = random.Random(sum(chunks))
    sessions = 2
    full = [_mixed(sum(chunks), rng) for _ in range(sessions)]
    table = torch.randn(VOCAB, 16, device=DEVICE)
    buf = torch.zeros(sessions, 3 * -(-sum(chunks) // 5), 32, device=DEVICE)
    offsets = torch.arange(sessions, device=DEVICE) * buf.stride(0)
    done = 0
    for size in chunks:
        # each session's id buffer so far; the kernel starts at group done // 5 (grid: groups touched)
        ids, cu = _pack([f[:done + size] for f in full])
        first = torch.full((sessions,), done, dtype=torch.int64, device=DEVICE)
        touched = -(-(done + size) // 5) - done // 5
        before = buf.clone()
        K.mixed_embedding(ids, cu, table, buf, offsets, touched, first_ids=first)
        untouched = 3 * (done // 5)
        assert torch.equal(buf[:, :untouched], before[:, :untouched]), "complete groups must not be rewritten"
        done += size
        for s in range(sessions):
            frames = 3 * -(-done // 5)
            torch.testing.assert_close(buf[s, :frames].cpu(), _expected(full[s][:done], table), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pair_embedding_matches_module(dtype):
    rng = random.Random(3)
    table = torch.randn(VOCAB, 24).to(DEVICE, dtype)
    for shape in [(1, 1), (2, 7), (3, 111)]:
        pairs = reshape_mixed_tokens(torch.stack([_mixed(5 * shape[1] // 3 + 1, rng) for _ in range(shape[0])]))
        got = K.pair_embedding(pairs.to(DEVICE), table)
        torch.testing.assert_close(got.cpu(), _expected_pairs(pairs, table), rtol=0, atol=0)
    pairs = torch.tensor([[[-3, 1025], [5, -1]]])
    torch.testing.assert_close(K.pair_embedding(pairs.to(DEVICE), table, clamp=True).cpu(),
                               _expected_pairs(pairs.clamp(min=0), table), rtol=0, atol=0)


def _expected_pairs(pairs: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    with kernel_backend("reference"):
        return _model_embedding(table.cpu())(pairs.cpu())


def test_layer_dispatch_forced_triton_equals_reference():
    rng = random.Random(4)
    seqs = [_mixed(n, rng) for n in (4, 17, 9)]
    table = torch.randn(VOCAB, 16, device=DEVICE)
    with kernel_backend("triton", "embedding"):
        fused = embed_mixed_sequences(seqs, table)
        pairs = dual_codebook_embedding(reshape_mixed_tokens(seqs[1]).to(DEVICE)[None], table)
    with kernel_backend("reference"):
        ref = embed_mixed_sequences(seqs, table)
        ref_pairs = dual_codebook_embedding(reshape_mixed_tokens(seqs[1]).to(DEVICE)[None], table)
    torch.testing.assert_close(fused, ref, rtol=0, atol=0)
    torch.testing.assert_close(pairs, ref_pairs, rtol=0, atol=0)


def test_bad_arguments_raise_clear_errors():
    table = torch.randn(VOCAB, 16, device=DEVICE)
    ids = torch.arange(10, device=DEVICE)
    cu = torch.tensor([0, 10], dtype=torch.int32, device=DEVICE)
    offs = torch.zeros(1, dtype=torch.int64, device=DEVICE)
    out = torch.zeros(1, 6, 32, device=DEVICE)
    with pytest.raises(InvalidInputError, match="ids"):
        K.mixed_embedding(ids.float(), cu, table, out, offs, 2)
    with pytest.raises(InvalidInputError, match="out: last dim"):
        K.mixed_embedding(ids, cu, table, torch.zeros(1, 6, 31, device=DEVICE), offs, 2)
    with pytest.raises(InvalidInputError, match="out_offsets"):
        K.mixed_embedding(ids, cu, table, out, torch.zeros(2, dtype=torch.int64, device=DEVICE), 2)
    with pytest.raises(InvalidInputError, match="pairs"):
        K.pair_embedding(torch.zeros(2, 3, dtype=torch.long, device=DEVICE), table)
    with pytest.raises(InvalidInputError, match="sequences"):
        embed_mixed_sequences([], table)
    with pytest.raises(InvalidInputError, match="backend"):
        embed_mixed(ids, cu, table, out, offs, 2, backend="fast")


@needs_kernels
def test_flow_inference_from_mixed_ids_uses_the_fused_kernel():
    """FlowModel.inference_mixed (fused ids -> encoder buffer, as token2wav runs it) equals the
    pairs path with the kernel forced on; the embedding itself is an exact gather."""
    from editx.layers import kernel_backend
    from editx.models.flow import FlowConfig, FlowModel, reshape_mixed_tokens
    from random_weights import fill_random_

    model = fill_random_(FlowModel(FlowConfig.tiny()), seed=1).to(DEVICE)
    g = torch.Generator().manual_seed(0)
    prompt, target = torch.randint(0, 5120, (23,), generator=g), torch.randint(-2, 5120, (17,), generator=g)
    feat, emb = torch.randn(1, 30, 80, generator=g), torch.randn(1, 192, generator=g)
    noise = torch.randn(1, 80, 200, generator=g)
    with kernel_backend("triton", op="embedding"):
        xs, tp = model.embed_mixed(prompt.to(DEVICE), target.to(DEVICE))
        fused = model.inference_mixed(target, prompt, feat, emb, noise, n_timesteps=2)
    pairs = torch.cat([reshape_mixed_tokens(prompt), reshape_mixed_tokens(target)])[None]
    assert tp == reshape_mixed_tokens(prompt).shape[0]
    assert torch.equal(xs.cpu(), model.embed_tokens(pairs.to(DEVICE), clamp=True).cpu())
    ref = model.inference(reshape_mixed_tokens(target)[None], reshape_mixed_tokens(prompt)[None], feat, emb,
                          noise, n_timesteps=2)
    torch.testing.assert_close(fused, ref, atol=0, rtol=0)
