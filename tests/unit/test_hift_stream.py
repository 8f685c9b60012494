"""Streaming HiFT (vocode_chunk) vs a direct re-statement of upstream's recipe, plus bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from editx.errors import InvalidInputError
from editx.models.hift import HiFTConfig, HiFTGenerator, HiFTStreamState, draw_nsf, hamming_fade_window


def tiny_model(seed: int = 0) -> HiFTGenerator:
    torch.manual_seed(seed)
    model = HiFTGenerator(HiFTConfig.tiny()).requires_grad_(False).eval()
    with torch.no_grad():
        model.f0_predictor.classifier.bias.fill_(150.0)  # voiced f0, so the source carries phase
    return model


def mel_chunks(lengths, batch=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 80, n, generator=gen) - 5.0 for n in lengths]


def call_draws(model, batch, frames, seed):
    cfg = model.config
    return draw_nsf(batch, frames * cfg.upsample_scale, cfg.n_harmonic_channels, "cpu",
                    torch.Generator().manual_seed(seed))


def stream(model, chunks, cache_len=8, seed=0):
    """Run vocode_chunk over `chunks`; returns (audio pieces, sources, draws per call)."""
    state, cached = HiFTStreamState(mel_cache_len=cache_len), 0
    audio, sources, draws = [], [], []
    for k, mel in enumerate(chunks):
        d = call_draws(model, mel.shape[0], cached + mel.shape[2], seed + k)
        out, state, source = model.vocode_chunk(mel, state, last=k == len(chunks) - 1, draws=d,
                                                return_source=True)
        cached = min(cache_len, cached + mel.shape[2])
        audio.append(out)
        sources.append(source)
        draws.append(d)
    return audio, sources, draws


def reference_stream(model, chunks, draws, cache_len=8):
    """Upstream's _token2wav_stream vocoder steps, written out literally."""
    overlap = cache_len * model.config.upsample_scale
    window = torch.from_numpy(np.hamming(2 * overlap)).to(torch.float32)
    cache_mel = torch.zeros(chunks[0].shape[0], 80, 0)
    cache_source = torch.zeros(chunks[0].shape[0], 1, 0)
    cache_speech = torch.zeros(chunks[0].shape[0], 0)
    out = []
    for k, (mel, d) in enumerate(zip(chunks, draws)):
        mel = torch.cat([cache_mel, mel], dim=2)
        speech, source = model.inference(mel, draws=d, cache_source=cache_source)
        if cache_speech.shape[-1] > 0:
            speech = speech.clone()
            speech[..., :overlap] = speech[..., :overlap] * window[:overlap] + cache_speech[..., -overlap:] * window[overlap:]
        cache_mel, cache_source, cache_speech = mel[..., -cache_len:], source[:, :, -overlap:], speech[:, -overlap:]
        out.append(speech if k == len(chunks) - 1 else speech[:, :-overlap])
    return out


@pytest.mark.parametrize("lengths", [(20, 16, 24, 6), (9, 1, 5), (8, 3), (13,)])
def test_stream_matches_upstream_recipe(lengths):
    model = tiny_model()
    chunks = mel_chunks(lengths)
    audio, sources, draws = stream(model, chunks)
    ref = reference_stream(model, chunks, draws)
    for k, (got, want) in enumerate(zip(audio, ref)):
        assert torch.equal(got, want), f"chunk {k}"
    scale, overlap = model.config.upsample_scale, 8 * model.config.upsample_scale
    # Every mel frame is emitted exactly once overall.
    assert sum(a.shape[1] for a in audio) == scale * sum(lengths)
    # The excitation continues: each call starts with the previous call's last source samples.
    for prev, cur in zip(sources, sources[1:]):
        assert torch.equal(cur[:, :, :overlap], prev[:, :, -overlap:])


def test_single_final_chunk_is_plain_inference():
    model = tiny_model()
    (mel,) = mel_chunks([11])
    d = call_draws(model, 1, 11, seed=5)
    audio, state = model.vocode_chunk(mel, None, last=True, draws=d)
    speech, _ = model.inference(mel, draws=d)
    assert torch.equal(audio, speech) and state.finished


def test_batch_two_stream_equals_rows():
    model = tiny_model()
    chunks = mel_chunks((12, 7, 4), batch=2)
    audio, _, draws = stream(model, chunks)
    for b in range(2):
        rows = [c[b: b + 1] for c in chunks]
        row_draws = [(d.rand_ini[b: b + 1], d.sine_noise[b: b + 1]) for d in draws]
        ref = reference_stream(model, rows, row_draws)
        for got, want in zip(audio, ref):
            torch.testing.assert_close(got[b: b + 1], want, rtol=1e-5, atol=1e-6)


def test_state_is_not_mutated():
    model = tiny_model()
    a, b = mel_chunks((10, 6))
    _, s1 = model.vocode_chunk(a, None, last=False, draws=call_draws(model, 1, 10, 0))
    saved = (s1.mel.clone(), s1.source.clone(), s1.speech.clone())
    _, s2 = model.vocode_chunk(b, s1, last=False, draws=call_draws(model, 1, 14, 1))
    assert s2 is not s1 and not s1.finished
    assert all(torch.equal(x, y) for x, y in zip(saved, (s1.mel, s1.source, s1.speech)))
    # The same state can be replayed (e.g. to retry a chunk) with the same result.
    again, _ = model.vocode_chunk(b, s1, last=False, draws=call_draws(model, 1, 14, 1))
    first, _ = model.vocode_chunk(b, s1, last=False, draws=call_draws(model, 1, 14, 1))
    assert torch.equal(again, first)


def test_fade_window_is_float64_hamming_cast_once():
    w = hamming_fade_window(3840)
    assert w.dtype == torch.float32 and w.shape == (7680,)
    assert torch.equal(w, torch.from_numpy(np.hamming(7680).astype(np.float32)))


def test_generator_draws_when_none_given():
    model = tiny_model()
    (mel,) = mel_chunks([10])
    a1, _ = model.vocode_chunk(mel, None, generator=torch.Generator().manual_seed(7))
    a2, _ = model.vocode_chunk(mel, None, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a1, a2) and a1.shape == (1, 10 * 480 - 3840)


# -- bad input ---------------------------------------------------------------------------
def test_finished_stream_rejects_more_chunks():
    model = tiny_model()
    (mel,) = mel_chunks([9])
    _, state = model.vocode_chunk(mel, None, last=True)
    with pytest.raises(InvalidInputError, match="state"):
        model.vocode_chunk(mel, state)


def test_short_first_chunk_rejected_unless_last():
    model = tiny_model()
    (mel,) = mel_chunks([5])
    with pytest.raises(InvalidInputError, match="mel_chunk"):
        model.vocode_chunk(mel, None, last=False)
    audio, _ = model.vocode_chunk(mel, None, last=True)
    assert audio.shape == (1, 5 * 480)


def test_bad_chunks_and_state():
    model = tiny_model()
    (mel,) = mel_chunks([9])
    _, state = model.vocode_chunk(mel, None)
    with pytest.raises(InvalidInputError, match="batch"):
        model.vocode_chunk(torch.zeros(2, 80, 4), state)
    with pytest.raises(InvalidInputError, match="mel_chunk"):
        model.vocode_chunk(torch.zeros(1, 40, 4), state)
    with pytest.raises(InvalidInputError, match="mel_chunk"):
        model.vocode_chunk(torch.zeros(1, 80, 0), None)
    with pytest.raises(InvalidInputError, match="state"):
        model.vocode_chunk(mel, {"mel": None})
    with pytest.raises(InvalidInputError, match="mel_cache_len"):
        HiFTStreamState(mel_cache_len=0)
    # Draws must cover the cached frames as well as the new ones.
    with pytest.raises(InvalidInputError, match="sine_noise"):
        model.vocode_chunk(mel, state, draws=call_draws(model, 1, 9, 0))
