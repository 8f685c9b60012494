"""Audio front end: decoding, resampling and every feature upstream computes from prompt audio.

All functions are stateless; the vq02 streaming front end passes its carry-over state
explicitly (`Vq02FrontendState`). Features are computed in float32 (half-precision input
is upcast) on the input's device.
"""
from .audio_io import audio_from_array, load_audio, to_mono, write_wav
from .fbank import kaldi_fbank, kaldi_mel_banks
from .mel import MelConfig, prompt_mel, slaney_mel_filterbank, whisper_log_mel
from .prompt_audio import (
    PromptAudio,
    campplus_fbank,
    peak_guard,
    preprocess_prompt,
    prompt_speech_feat,
    tokenizer_wav16,
)
from .resample import resample, resampled_length, sinc_resample_kernel
from .trim import TrimWindow, apply_trim_window, nonsilent_span, trim_silence, trim_window
from .vq02_features import (
    Vq02FrontendConfig,
    Vq02FrontendState,
    extract_vq02_features,
    extract_vq02_piece,
    stack_lfr,
)

__all__ = [
    "audio_from_array", "load_audio", "to_mono", "write_wav",
    "kaldi_fbank", "kaldi_mel_banks",
    "MelConfig", "prompt_mel", "slaney_mel_filterbank", "whisper_log_mel",
    "PromptAudio", "campplus_fbank", "peak_guard", "preprocess_prompt", "prompt_speech_feat", "tokenizer_wav16",
    "resample", "resampled_length", "sinc_resample_kernel",
    "TrimWindow", "apply_trim_window", "nonsilent_span", "trim_silence", "trim_window",
    "Vq02FrontendConfig", "Vq02FrontendState", "extract_vq02_features", "extract_vq02_piece", "stack_lfr",
]
