"""JSON request bodies of the HTTP server (pydantic; unknown fields are rejected, not ignored)."""
from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is a 422 naming it, not silently dropped


class SamplingBody(_Body):
    """Overrides of upstream's sampling (temperature 0.7, top-k 50, repetition window 10)."""

    greedy: bool = False
    temperature: Optional[float] = None
    top_k: Optional[int] = None
    repetition_window: Optional[int] = None
    repetition_threshold: Optional[float] = None
    max_new_tokens: Optional[int] = None


class _AudioRequest(_Body):
    seed: Optional[int] = Field(None, description="fixed seed: the same request gives the same audio")
    sampling: Optional[SamplingBody] = None
    stream: bool = Field(True, description="send chunks as they are made; false: one whole body")
    format: str = Field("wav", description="wav | pcm16 | f32 (mono, 24 kHz)")
    priority: int = Field(0, description="scheduling priority in the engine (higher first)")


class CloneBody(_AudioRequest):
    """Speak `text` in the voice of the prompt audio (base64 file bytes, or an uploaded voice_id)."""

    prompt_audio: Optional[str] = Field(None, description="base64 of an audio file (wav, flac, ogg, ...)")
    voice_id: Optional[str] = Field(None, description="id from POST /v1/voices instead of prompt_audio")
    prompt_text: str
    text: str
    split: bool = Field(False, description="speak long text (<= 100,000 characters) as consecutive requests of "
                                           "whole sentences, streamed as one")


class EditBody(_AudioRequest):
    """Edit the audio by instruction; with n_iter > 1 the response is the last iteration."""

    audio: Optional[str] = Field(None, description="base64 of an audio file")
    voice_id: Optional[str] = None
    audio_text: str = ""
    edit_type: str
    edit_info: Optional[str] = None
    text: Optional[str] = Field(None, description="new text with tags (paralinguistic edits)")
    n_iter: int = 1


class VoiceBody(_Body):
    audio: str = Field(..., description="base64 of an audio file")
    text: Optional[str] = Field(None, description="what is said in the audio: lets POST /v1/audio/speech clone it")
    name: Optional[str] = Field(None, description="a name to call the voice by, e.g. an OpenAI voice name")


class SpeechBody(_Body):
    """OpenAI's `POST /v1/audio/speech` body (what `openai.audio.speech.create` sends).

    `voice` is the id or name of a voice uploaded with its transcript. Fields this server cannot
    honour (mp3/opus/aac/flac, speed != 1, instructions) are refused by name, not ignored."""

    model: Optional[str] = Field(None, description="accepted and ignored: the server runs one model")
    input: str
    voice: str
    response_format: str = Field("wav", description="wav | pcm (24 kHz mono 16-bit); OpenAI's default mp3 is "
                                                    "not available")
    speed: float = 1.0
    instructions: Optional[str] = None
    stream_format: str = Field("audio", description="audio (the bytes) | sse (speech.audio.delta events with "
                                                     "base64 audio, then speech.audio.done with the usage)")
    seed: Optional[int] = Field(None, description="editx extension: fixed seed, the same request gives the same audio")
    sampling: Optional[SamplingBody] = Field(None, description="editx extension: sampling overrides, as in /v1/clone")
    split: bool = Field(False, description="editx extension: long input spoken piece by piece, as in /v1/clone")
