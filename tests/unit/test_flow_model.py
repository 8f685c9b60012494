"""FlowModel.inference: shapes, prompt-mel alignment, bf16 vs fp32, input errors."""
from __future__ import annotations

import math

import pytest
import torch

from random_weights import fill_random_

from editx.errors import InvalidInputError
from editx.models.flow import FlowConfig, FlowModel, align_prompt_mel, cosine_time_span, reshape_mixed_tokens

N_STEPS = 4


def tiny_model(seed: int = 0) -> FlowModel:
    return fill_random_(FlowModel(FlowConfig.tiny()), seed)


def request(n_target: int = 23, n_prompt: int = 14, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    target = reshape_mixed_tokens(torch.randint(0, 1024, (n_target,), generator=g))[None]
    prompt = reshape_mixed_tokens(torch.randint(0, 1024, (n_prompt,), generator=g))[None]
    feat = torch.randn(1, 2 * prompt.shape[1], 80, generator=g)
    emb = torch.randn(1, 192, generator=g)
    noise = torch.randn(1, 80, 400, generator=g)
    return target, prompt, feat, emb, noise


def test_inference_shapes_and_states():
    model = tiny_model()
    target, prompt, feat, emb, noise = request()
    mel, states = model.inference(target, prompt, feat, emb, noise, N_STEPS, return_states=True)
    total = 2 * (target.shape[1] + prompt.shape[1])
    assert mel.shape == (1, 80, 2 * target.shape[1]) and mel.dtype == torch.float32
    assert states.shape == (N_STEPS, 80, total)
    assert torch.equal(states[0], noise[0, :, :total])  # the ODE starts at the noise slice
    assert torch.isfinite(mel).all()


def test_cosine_schedule():
    t = cosine_time_span(10, "cpu")
    assert t[0] == 0 and abs(float(t[-1]) - 1) < 1e-7
    assert torch.allclose(t, 1 - torch.cos(torch.linspace(0, 1, 11) * math.pi / 2))


def test_prompt_mel_is_nearest_resized_to_twice_the_prompt_frames():
    feat = torch.arange(41.0).view(1, 41, 1).expand(1, 41, 80)
    out = align_prompt_mel(feat, 36)
    assert out.shape == (1, 36, 80)
    assert out[0, :, 0].tolist() == [math.floor(i * 41 / 36) for i in range(36)]
    assert align_prompt_mel(feat, 41) is feat

    model = tiny_model(1)
    target, prompt, _, emb, noise = request(seed=1)
    long_feat = torch.randn(1, 2 * prompt.shape[1] + 7, 80)
    direct = model.inference(target, prompt, long_feat, emb, noise, N_STEPS)
    aligned = model.inference(target, prompt, align_prompt_mel(long_feat, 2 * prompt.shape[1]), emb, noise, N_STEPS)
    assert torch.equal(direct, aligned)


def test_speaker_projection_ignores_embedding_scale():
    model = tiny_model(2)
    emb = torch.randn(1, 192)
    with torch.no_grad():
        torch.testing.assert_close(model.project_speaker(emb), model.project_speaker(3.0 * emb))


def test_negative_ids_are_clamped_to_zero_in_the_non_streaming_path():
    model = tiny_model(3)
    target, prompt, feat, emb, noise = request(seed=3)
    negative = target.clone()
    negative[0, 0, 0] = -7
    zero = target.clone()
    zero[0, 0, 0] = 0
    assert torch.equal(model.inference(negative, prompt, feat, emb, noise, N_STEPS),
                       model.inference(zero, prompt, feat, emb, noise, N_STEPS))


def test_bfloat16_inference_is_finite_and_close_to_float32():
    model = tiny_model(4)
    target, prompt, feat, emb, noise = request(seed=4)
    ref = model.inference(target, prompt, feat, emb, noise, N_STEPS)
    low = model.to(torch.bfloat16).inference(target, prompt, feat, emb, noise, N_STEPS)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()  # the ODE state stays fp32
    # bf16 rounds weights and activations to 8 significant bits (unit roundoff 2^-9 ≈ 2e-3);
    # encoder (4 blocks) + DiT (2 blocks) per step, 4 steps, errors add roughly in quadrature
    # to a relative RMS of ~1e-2 (measured ≈ 7e-3). 5e-2 catches real breakage, which is O(1).
    rel = (low - ref).norm() / ref.norm()
    assert rel < 5e-2, float(rel)


@pytest.mark.parametrize("mutate,match", [
    (lambda r: {**r, "target": r["target"] + 5000}, "token_pairs: token id"),
    (lambda r: {**r, "target": r["target"].float()}, "token_pairs: expected an integer"),
    (lambda r: {**r, "prompt": r["prompt"][:, :, :1]}, "prompt_pairs: expected token pairs"),
    (lambda r: {**r, "target": r["target"].expand(2, -1, -1)}, "token_pairs: batch size"),
    (lambda r: {**r, "feat": r["feat"][:, :, :40]}, "prompt_feat: expected shape"),
    (lambda r: {**r, "emb": torch.full((1, 192), float("nan"))}, "embedding: contains NaN"),
    (lambda r: {**r, "emb": torch.zeros(1, 80)}, "embedding: expected shape"),
    (lambda r: {**r, "noise": r["noise"][:, :, :20]}, "noise: needs at least"),
    (lambda r: {**r, "noise": r["noise"][:, :40]}, "noise: expected shape"),
    (lambda r: {**r, "steps": 0}, "n_timesteps"),
])
def test_inference_input_errors(mutate, match):
    model = tiny_model(5)
    target, prompt, feat, emb, noise = request(seed=5)
    r = mutate(dict(target=target, prompt=prompt, feat=feat, emb=emb, noise=noise, steps=N_STEPS))
    with pytest.raises(InvalidInputError, match=match):
        model.inference(r["target"], r["prompt"], r["feat"], r["emb"], r["noise"], r["steps"])
