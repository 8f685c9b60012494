"""End-to-end behaviour of the public Runtime on dummy:tiny (random weights, real code paths)."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from editx import Audio
from editx.frontend import load_audio


def _check_audio(audio: Audio) -> None:
    assert audio.sample_rate == 24000
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    assert len(audio.samples) > 0 and np.isfinite(audio.samples).all()
    # HiFT clamps to ±0.99 (spec §5.7); streamed chunks are cross-faded with the two halves of
    # np.hamming(7680), which sum to at most 1.08 at one sample, so a saturated random-weight
    # signal can reach 0.99 * 1.08 there (upstream's streaming does the same).
    fade_peak = max(a + b for a, b in zip(np.hamming(7680)[:3840], np.hamming(7680)[3840:]))
    assert np.abs(audio.samples).max() <= 0.99 * fade_peak + 1e-6
    # 480 samples per mel frame, 2 mel frames per token frame, 3 token frames per 5 LLM ids
    assert len(audio.samples) % 480 == 0


def test_clone_produces_24k_audio(rt, sampling, prompt_wav):
    audio = rt.clone(prompt_wav, "His political stance was conservative.", "Hello there.", seed=3, sampling=sampling)
    _check_audio(audio)
    assert audio.text == "Hello there."
    assert audio.info["generated_tokens"] <= sampling.max_new_tokens
    # 5 LLM ids (minus the dropped last one) -> 3 token frames -> 2880 samples per full group
    kept = audio.info["generated_tokens"] - 1
    assert len(audio.samples) == 2880 * -(-kept // 5)


def test_same_seed_same_audio_different_seed_differs(rt, sampling, prompt_wav):
    a = rt.clone(prompt_wav, "A prompt.", "Some text.", seed=11, sampling=sampling)
    b = rt.clone(prompt_wav, "A prompt.", "Some text.", seed=11, sampling=sampling)
    c = rt.clone(prompt_wav, "A prompt.", "Some text.", seed=12, sampling=sampling)
    assert np.array_equal(a.samples, b.samples)
    assert len(a.samples) != len(c.samples) or not np.array_equal(a.samples, c.samples)


def test_inputs_as_path_bytes_array_and_audio_agree(rt, sampling, prompt_wav):
    wav, sr = load_audio(prompt_wav)
    forms = [prompt_wav, prompt_wav.read_bytes(), (wav[0].numpy(), sr), Audio(wav[0].numpy(), sr)]
    outs = [rt.clone(f, "A prompt.", "Text.", seed=5, sampling=sampling).samples for f in forms]
    for out in outs[1:]:
        assert np.array_equal(out, outs[0])


def test_edit_iterations_chain_through_pcm16(rt, sampling, prompt_wav):
    results = rt.edit(prompt_wav, "His political stance was conservative.", "style", "whisper", n_iter=2,
                      seed=1, sampling=sampling)
    assert len(results) == 2
    for r in results:
        _check_audio(r)
        assert r.text == "His political stance was conservative."
    # iteration 2 starts from iteration 1's output after a 16-bit WAV round trip (spec §2.4)
    direct = rt.edit(results[0].to_pcm16_roundtrip(), results[0].text, "style", "whisper", seed=2,
                     sampling=sampling)[0]
    assert np.array_equal(direct.samples, results[1].samples)


def test_paralinguistic_edit_returns_tagged_text(rt, sampling, prompt_wav):
    out = rt.edit(prompt_wav, "So that is how it went.", "paralinguistic", text="So [Laughter] that is how it went.",
                  seed=0, sampling=sampling)[0]
    assert out.text == "So [Laughter] that is how it went."


@pytest.mark.parametrize("edit_type", ["denoise", "vad"])
def test_edit_types_without_text(rt, sampling, prompt_wav, edit_type):
    _check_audio(rt.edit(prompt_wav, "", edit_type, seed=0, sampling=sampling)[0])


def test_greedy_is_deterministic_without_seed(rt, prompt_wav):
    params = rt.default_sampling(greedy=True, max_new_tokens=30)
    a = rt.clone(prompt_wav, "A prompt.", "Text.", sampling=params)
    b = rt.clone(prompt_wav, "A prompt.", "Text.", sampling=params)
    assert np.array_equal(a.samples, b.samples)


def test_save_writes_16bit_24k_wav(rt, sampling, prompt_wav, tmp_path):
    audio = rt.clone(prompt_wav, "A prompt.", "Text.", seed=0, sampling=sampling)
    path = audio.save(tmp_path / "sub" / "out.wav")
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.subtype) == (24000, 1, "PCM_16")
    back, _ = sf.read(str(path), dtype="float32")
    # one int16 step, after limiting to full scale (see Audio.save)
    assert np.abs(back - np.clip(audio.samples, -1, 1)).max() <= 1.0 / 32767 + 1e-7


def test_encode_voice_is_cached_per_voice(rt, prompt_wav):
    rt.voice_cache.clear()
    voice = rt.encode_voice(prompt_wav)
    hits = rt.voice_cache.hits
    again = rt.encode_voice(prompt_wav.read_bytes())  # same samples, other input form: same key
    assert again is voice and rt.voice_cache.hits == hits + 1
    # a cache miss recomputes the same codes: the dither RNG is seeded from the audio content
    rt.voice_cache.clear()
    fresh = rt.encode_voice(prompt_wav)
    assert fresh is not voice and fresh.vq02 == voice.vq02 and fresh.vq06 == voice.vq06
    assert len(voice.llm_audio_ids) % 5 == 0
    assert all(65536 <= i < 65536 + 5120 for i in voice.llm_audio_ids)
    assert voice.conditioning.embedding.shape == (1, 192)


def test_soxr_resampler_runs_and_stays_close(prompt_wav):
    """soxr is an opt-in fast resampler: same shapes, features close to the upstream-exact sinc path."""
    from editx import Runtime

    sinc = Runtime.from_pretrained("dummy:tiny").encode_voice(prompt_wav)
    soxr = Runtime.from_pretrained("dummy:tiny", resampler="soxr").encode_voice(prompt_wav)
    a, b = sinc.conditioning.prompt_feat, soxr.conditioning.prompt_feat
    assert a.shape == b.shape
    # Log-mel (bf16-rounded) of the same 44.1 kHz speech through two good anti-alias filters:
    # they differ only near the 12 kHz band edge, far above the 8 kHz mel fmax. Measured:
    # median 0, max 0.06 nats; a broken resampler (wrong rate, silence) is off by several nats.
    assert (a - b).abs().median() < 0.01 and (a - b).abs().max() < 0.5


def test_bf16_runtime_on_cpu(prompt_wav):
    from editx import Runtime

    rt = Runtime.from_pretrained("dummy:tiny", dtype="bfloat16", decoder_dtype="bfloat16")
    audio = rt.clone(prompt_wav, "A prompt.", "Text.", seed=0, sampling=rt.default_sampling(max_new_tokens=30))
    _check_audio(audio)
