"""Shared helpers of the decoder tests: tiny flow / HiFT models, token inputs, voices and a
peak-relative comparison (used by test_batched_decoder.py and test_dit_slots.py)."""
from __future__ import annotations

import torch

from random_weights import fill_random_

from editx.engine.token2wav import Token2Wav, VoiceConditioning
from editx.models.flow import FlowConfig, FlowModel, inference_chunk, reshape_mixed_tokens
from editx.models.flow.streaming import inference_chunk_batch
from editx.models.hift import HiFTConfig, HiFTGenerator


def tiny_flow(seed: int = 1, dtype: torch.dtype = torch.float32) -> FlowModel:
    return fill_random_(FlowModel(FlowConfig.tiny()), seed).to(dtype)


def tiny_hift(seed: int = 2, dtype: torch.dtype = torch.float32) -> HiFTGenerator:
    # Not fill_random_ (nor the dummy preset's init): with those weights HiFT saturates (exp
    # magnitudes at the 100 cap, samples at the ±0.99 clip), so a 1e-6 change of the mel, or just
    # batching, moves samples by ~5e-3 and no tolerance could separate a wrong batch from reduction
    # noise. torch's default init is well-conditioned (a 1e-6 mel change moves the audio by ~1e-7),
    # as in test_hift_stream.py.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = HiFTGenerator(HiFTConfig.tiny()).requires_grad_(False).eval()
    with torch.no_grad():
        model.f0_predictor.classifier.bias.fill_(150.0)  # voiced f0, so the source carries phase
    return model.to(dtype)


def mixed_ids(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    vq02 = torch.randint(0, 1024, (n,), generator=g)
    vq06 = torch.randint(1024, 5120, (n,), generator=g)
    return torch.where(torch.arange(n) % 5 < 2, vq02, vq06).tolist()


def make_voice(prompt_ids: int, seed: int) -> VoiceConditioning:
    g = torch.Generator().manual_seed(seed)
    frames = 2 * 3 * -(-prompt_ids // 5)
    # an odd mel length, so the prompt mel is nearest-resized as upstream does
    feat = torch.randn(1, frames + 3, 80, generator=g) - 4.0
    return VoiceConditioning.from_features(mixed_ids(prompt_ids, seed), feat, torch.randn(1, 192, generator=g))


def make_decoder(flow, hift, n_steps: int, seed: int = 0) -> Token2Wav:
    noise = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(seed))
    return Token2Wav(flow, hift, noise, n_timesteps=n_steps)


def assert_close(got: torch.Tensor, ref: torch.Tensor, rtol: float, what: str) -> None:
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    if ref.numel() == 0:
        return
    assert torch.isfinite(got).all(), f"{what}: non-finite values"
    err = float((got.double() - ref.double()).abs().max())
    peak = max(float(ref.double().abs().max()), 1e-3)
    assert err <= rtol * peak, f"{what}: max |diff| {err:.3g} > {rtol} x peak {peak:.3g}"


def pairs_of(n_ids: int, seed: int) -> torch.Tensor:
    return reshape_mixed_tokens(torch.tensor(mixed_ids(n_ids, seed)))[None]


def chunk_rounds_vs_single(flow, got: list, ref: list, rounds, noise, rtol: float, check_states) -> None:
    """Feed round r's chunks (token frames incl. lookahead, last) to the first len(round) `got` states
    as one `inference_chunk_batch` and to the `ref` states one by one with `inference_chunk`; compare
    the mels and call check_states(got_b, ref_b, what) on each pair of new states."""
    for r, chunk in enumerate(rounds):
        pairs = [pairs_of(5 * frames // 3 + 5, 100 * r + b)[:, :frames] for b, (frames, _) in enumerate(chunk)]
        lasts = [last for _, last in chunk]
        mels, states = inference_chunk_batch(flow, pairs, got[:len(chunk)], lasts, noise)
        for b in range(len(chunk)):
            mel, ref[b] = inference_chunk(flow, pairs[b], ref[b], lasts[b], noise)
            got[b] = states[b]
            assert_close(mels[b], mel, rtol, f"round {r} stream {b} mel")
            check_states(got[b], ref[b], f"round {r} stream {b}")


def loaded_pool_solve(flow, ring: bool, batch: int, width: int, device: str = "cpu"):
    """A `DiTSlots` pool (3 streams, 160 prompt frames, 40 frames of left context, chunks up to 102
    frames, 3 ODE steps) with one solve's inputs loaded into its (batch, width) bucket buffers: rows
    with a prompt, ragged valid lengths, earlier ring frames and conv caches (chunks). Returns
    (slots, step): step() is the bucket's solve, what `DiTSlots` records as a CUDA graph. Call
    both inside torch.inference_mode()."""
    from editx.models.flow.dit_slots import DiTSlots, SlotRow

    slots = DiTSlots(flow.decoder, 3, 3, 160, 40, 102, mode="static", batch_buckets=(1, 2, 4), width_step=24)
    gen = torch.Generator().manual_seed(batch * 100 + width)
    x = torch.randn(batch, 80, width, generator=gen).to(device)
    dit = flow.cfg.dit
    conv = torch.randn(3, dit.depth, 2, 2, dit.hidden_size, 2, generator=gen).to(device, flow.dtype)
    rows = [SlotRow(lease, ring, 5 * b, width - b, 23 + b, tuple(160 + f for f in range(b)) if ring else (),
                    conv if ring else None) for b, lease in enumerate(slots.acquire(batch))]
    bucket_b = next(b for b in slots.batch_buckets if b >= batch)
    static = slots._make_static(bucket_b, next(w for w in slots.widths if w >= width))
    slots._load(static, x, x[:, :, 0], x, x, rows)
    return slots, lambda: slots._step(static)
