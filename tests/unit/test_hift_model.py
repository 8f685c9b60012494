"""HiFTGenerator on a random tiny model: batching, odd lengths, draws, caching, dtypes, bad input."""
from __future__ import annotations

import pytest
import torch

from editx.errors import InvalidInputError
from editx.models.hift import HiFTConfig, HiFTGenerator, NSFDraws, draw_nsf


def tiny_model(seed: int = 0, f0_bias: float = 150.0) -> HiFTGenerator:
    """Random tiny HiFT whose f0 straddles the voiced threshold (bias shifts it into speech range)."""
    torch.manual_seed(seed)
    model = HiFTGenerator(HiFTConfig.tiny()).requires_grad_(False).eval()
    with torch.no_grad():
        model.f0_predictor.classifier.bias.fill_(f0_bias)
    return model


def random_mel(batch: int, frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 80, frames, generator=torch.Generator().manual_seed(seed)) - 5.0


def draws_for(model: HiFTGenerator, batch: int, frames: int, seed: int = 0) -> NSFDraws:
    cfg = model.config
    return draw_nsf(batch, frames * cfg.upsample_scale, cfg.n_harmonic_channels, "cpu",
                    torch.Generator().manual_seed(seed))


def test_batch_of_two_equals_two_single_calls():
    model = tiny_model()
    mel = random_mel(2, 9)
    draws = draws_for(model, 2, 9)
    speech, source, f0 = model.inference(mel, draws=draws, return_f0=True)
    for b in range(2):
        one = model.inference(mel[b: b + 1], draws=(draws.rand_ini[b: b + 1], draws.sine_noise[b: b + 1]),
                              return_f0=True)
        for got, ref, what in zip(one, (speech, source, f0), ("speech", "source", "f0")):
            torch.testing.assert_close(got, ref[b: b + 1], rtol=1e-5, atol=1e-6, msg=f"{what} row {b}")


@pytest.mark.parametrize("frames", [1, 3, 7])
def test_odd_mel_lengths(frames):
    model = tiny_model()
    scale = model.config.upsample_scale
    mel = random_mel(1, frames)
    speech, source, f0 = model.inference(mel, draws=draws_for(model, 1, frames), return_f0=True)
    assert speech.shape == (1, frames * scale) and speech.dtype == torch.float32
    assert source.shape == (1, 1, frames * scale) and f0.shape == (1, frames)
    assert torch.isfinite(speech).all() and torch.isfinite(source).all()
    assert speech.abs().max() <= model.config.audio_limit


def test_inference_is_f0_then_source_then_decode():
    model = tiny_model()
    mel = random_mel(1, 6)
    draws = draws_for(model, 1, 6)
    speech, source, f0 = model.inference(mel, draws=draws, return_f0=True)
    f0_ref = model.f0(mel)
    source_ref = model.source(f0_ref, *draws)
    assert torch.equal(f0, f0_ref)
    assert torch.equal(source, source_ref)
    assert torch.equal(speech, model.decode(mel, source_ref))
    # Voiced and unvoiced frames are both exercised by the tiny model.
    assert (f0 > model.config.nsf_voiced_threshold).any()


def test_generator_draws_follow_upstream_order():
    model = tiny_model()
    mel = random_mel(1, 4)
    speech, source = model.inference(mel, generator=torch.Generator().manual_seed(123))
    gen = torch.Generator().manual_seed(123)
    rand_ini = torch.rand(1, model.config.n_harmonic_channels, generator=gen)  # draw 1: initial phases
    sine_noise = torch.randn(1, 4 * model.config.upsample_scale, model.config.n_harmonic_channels,
                             generator=gen)  # draw 2: harmonic noise
    speech_ref, source_ref = model.inference(mel, draws=(rand_ini, sine_noise))
    assert torch.equal(speech, speech_ref) and torch.equal(source, source_ref)


def test_cache_source_overwrites_the_first_samples():
    model = tiny_model()
    mel = random_mel(1, 5)
    draws = draws_for(model, 1, 5)
    _, plain = model.inference(mel, draws=draws)
    cache = torch.full((1, 1, 700), 0.25)
    speech, source = model.inference(mel, draws=draws, cache_source=cache)
    assert torch.equal(source[:, :, :700], cache)
    assert torch.equal(source[:, :, 700:], plain[:, :, 700:])
    assert torch.equal(speech, model.decode(mel, source))
    # An empty cache changes nothing (upstream's first streaming call).
    _, same = model.inference(mel, draws=draws, cache_source=torch.zeros(1, 1, 0))
    assert torch.equal(same, plain)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_modules_run_and_return_float32(dtype):
    model = tiny_model()
    mel = random_mel(1, 5)
    draws = draws_for(model, 1, 5)
    ref, _ = model.inference(mel, draws=draws)
    low = tiny_model().to(dtype)
    speech, source = low.inference(mel, draws=draws)
    assert speech.dtype == torch.float32 and source.dtype == torch.float32
    assert torch.isfinite(speech).all()
    assert (speech - ref).abs().max() < 0.05  # loose: 8/11-bit mantissas through ~30 convs


# -- bad input ---------------------------------------------------------------------------
@pytest.mark.parametrize("mel,what", [
    (torch.zeros(80, 5), "2-D"),
    (torch.zeros(1, 81, 5), "wrong channels"),
    (torch.zeros(1, 80, 0), "no frames"),
    (torch.zeros(1, 80, 5, dtype=torch.int64), "integer"),
    ("mel", "not a tensor"),
])
def test_bad_mel_raises(mel, what):
    model = tiny_model()
    for call in (model.f0, lambda m: model.inference(m), lambda m: model.decode(m, torch.zeros(1, 1, 2400))):
        with pytest.raises(InvalidInputError, match="mel"):
            call(mel)


def test_bad_draws_raise():
    model = tiny_model()
    mel = random_mel(1, 3)
    good = draws_for(model, 1, 3)
    with pytest.raises(InvalidInputError, match="rand_ini"):
        model.inference(mel, draws=(good.rand_ini[:, :5], good.sine_noise))
    with pytest.raises(InvalidInputError, match="sine_noise"):
        model.inference(mel, draws=(good.rand_ini, good.sine_noise[:, :-1]))
    with pytest.raises(InvalidInputError, match="draws"):
        model.inference(mel, draws=good.rand_ini)
    with pytest.raises(InvalidInputError, match="f0"):
        model.source(torch.zeros(1, 1, 3), *good)


def test_bad_source_and_cache_source_raise():
    model = tiny_model()
    mel = random_mel(1, 3)
    with pytest.raises(InvalidInputError, match="source"):
        model.decode(mel, torch.zeros(1, 1, 3 * model.config.upsample_scale - 1))
    with pytest.raises(InvalidInputError, match="cache_source"):
        model.inference(mel, cache_source=torch.zeros(1, 1, 3 * model.config.upsample_scale + 1))
    with pytest.raises(InvalidInputError, match="cache_source"):
        model.inference(mel, cache_source=torch.zeros(2, 1, 10))


def test_bad_config_raises():
    with pytest.raises(InvalidInputError, match="config"):
        HiFTGenerator({"base_channels": 32})
