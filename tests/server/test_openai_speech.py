"""`POST /v1/audio/speech` (OpenAI's speech API) over a dummy:tiny Runtime: the same audio as the Python
API, the OpenAI client library itself as the caller, and every field it cannot honour refused by name."""
from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import speech_clips
import soundfile as sf
from fastapi.testclient import TestClient

from editx.server import ServerConfig, create_app, wire
from editx.server.state import StoredVoice, UnknownVoice, VoiceRegistry

TRANSCRIPT = "His political stance was conservative, and he was particularly close to margaret thatcher."
SAY = "Hello through the OpenAI speech API."
API_KEY = "sk-editx-test-key"
SHORT = {"sampling": {"max_new_tokens": 60}}  # editx extension: ~1.4 s of audio, about a second per request here


@pytest.fixture(scope="module")
def app(rt):
    return create_app(rt, ServerConfig(api_key=API_KEY), model_name="dummy:tiny")


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"})


@pytest.fixture(scope="module")
def voice(client):
    """The speech clip uploaded with its transcript under the name "narrator"."""
    data = speech_clips.require().read_bytes()
    r = client.post("/v1/voices", json={"audio": base64.b64encode(data).decode(), "text": TRANSCRIPT,
                                        "name": "narrator"})
    assert r.status_code == 200, r.text
    return r.json()


def expected_clone(rt, seed=None):
    samples, sr = sf.read(str(speech_clips.require()), dtype="float32", always_2d=True)
    return rt.clone((samples.T.copy(), sr), TRANSCRIPT, SAY, seed=seed, sampling=rt.default_sampling(max_new_tokens=60))


def expected_pcm(rt, seed=None) -> bytes:
    return wire.pcm16(expected_clone(rt, seed).samples)


def sse_events(lines) -> list[dict]:
    """The JSON payloads of a server-sent event stream's `data:` lines (blank lines separate events)."""
    events = []
    for line in lines:
        line = line.decode() if isinstance(line, bytes) else line
        if line.startswith("data: "):
            events.append(json.loads(line[len("data: "):]))
        else:
            assert line == "", f"unexpected line in the event stream: {line!r}"
    return events


def check_speech_events(events: list[dict], rt, response_format: str) -> None:
    """Deltas of base64 audio, then one done event whose usage is the clone's token counts."""
    *deltas, done = events
    assert deltas and all(e["type"] == "speech.audio.delta" for e in deltas)
    audio = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    if response_format == "wav":  # the open-ended header rides in the first delta
        assert base64.b64decode(deltas[0]["audio"])[:4] == b"RIFF" and audio[:4] == b"RIFF"
        audio = audio[44:]
    clone = expected_clone(rt)
    assert audio == wire.pcm16(clone.samples)
    prompt, generated = clone.info["prompt_tokens"], clone.info["generated_tokens"]
    assert 0 < generated <= 60 and prompt > 0
    assert done == {"type": "speech.audio.done",
                    "usage": {"input_tokens": prompt, "output_tokens": generated, "total_tokens": prompt + generated}}


def speech(client, **fields):
    return client.post("/v1/audio/speech", json={"model": "editx", "input": SAY, "voice": "narrator", **SHORT, **fields})


def test_upload_reports_names_and_transcript(voice):
    assert voice["names"] == ["narrator"] and voice["has_text"] is True and voice["duration_s"] > 1


@pytest.mark.parametrize("ref", ["name", "id"])
def test_pcm_is_the_runtime_clone_of_the_named_voice(rt, client, voice, ref):
    r = speech(client, voice="narrator" if ref == "name" else voice["voice_id"], response_format="pcm")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("audio/L16") and r.headers["x-sample-rate"] == "24000"
    assert r.content == expected_pcm(rt)


def test_wav_streams_with_an_open_header_and_a_seed_reaches_the_request(rt, client, voice):
    r = speech(client, response_format="wav", seed=11)
    assert r.status_code == 200 and r.content[:4] == b"RIFF"
    assert int.from_bytes(r.content[40:44], "little") == wire.UNKNOWN_SIZE
    assert r.content[44:] == expected_pcm(rt, seed=11)
    assert r.content[44:] != expected_pcm(rt)  # another seed, other audio


def test_the_openai_client_library_gets_the_same_audio(rt, app, voice):
    openai = pytest.importorskip("openai")
    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key=API_KEY, http_client=TestClient(app), max_retries=0)
    whole = sdk.audio.speech.create(model="editx", voice="narrator", input=SAY, response_format="pcm",
                                  extra_body=SHORT)
    assert whole.content == expected_pcm(rt)
    with sdk.audio.speech.with_streaming_response.create(model="editx", voice="narrator", input=SAY,
                                                         response_format="wav", extra_body=SHORT) as streamed:
        body = b"".join(streamed.iter_bytes(4096))
    assert body[:4] == b"RIFF" and body[44:] == whole.content
    with pytest.raises(openai.NotFoundError, match="unknown voice 'alloy'"):
        sdk.audio.speech.create(model="editx", voice="alloy", input=SAY, response_format="wav")
    # The library sends no response_format unless asked (OpenAI's own default is mp3): ours is wav.
    default = sdk.audio.speech.create(model="editx", voice="narrator", input=SAY, extra_body=SHORT)
    assert default.content[:4] == b"RIFF" and default.content[44:] == whole.content
    with pytest.raises(openai.BadRequestError, match="response_format"):
        sdk.audio.speech.create(model="editx", voice="narrator", input=SAY, response_format="mp3")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url="http://testserver/v1", api_key="sk-wrong-key", http_client=TestClient(app),
                      max_retries=0).audio.speech.create(model="editx", voice="narrator", input=SAY,
                                                         response_format="wav")


@pytest.mark.parametrize("response_format", ["pcm", "wav"])
def test_sse_streams_speech_events_with_the_same_audio_and_the_usage(rt, client, voice, response_format):
    with client.stream("POST", "/v1/audio/speech", json={"model": "editx", "input": SAY, "voice": "narrator",
                                                         "response_format": response_format,
                                                         "stream_format": "sse", **SHORT}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.iter_lines())
    check_speech_events(events, rt, response_format)


def test_the_openai_client_library_reads_the_sse_stream(rt, app, voice):
    openai = pytest.importorskip("openai")
    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key=API_KEY, http_client=TestClient(app), max_retries=0)
    with sdk.audio.speech.with_streaming_response.create(model="editx", voice="narrator", input=SAY,
                                                         response_format="pcm", stream_format="sse",
                                                         extra_body=SHORT) as streamed:
        events = sse_events(streamed.iter_lines())
    check_speech_events(events, rt, "pcm")


REFUSED = [
    ({"response_format": "mp3"}, 400, "response_format: 'mp3' is not available"),
    ({"response_format": "ogg"}, 400, "unknown format 'ogg'"),
    ({"speed": 1.5}, 400, "speed"),
    ({"instructions": "sound cheerful"}, 400, "instructions"),
    ({"stream_format": "chunks"}, 400, "stream_format: unknown 'chunks'"),
    ({"input": "   "}, 400, "input"),
    ({"voice": "alloy"}, 404, "voice: unknown voice 'alloy'"),
    ({"voices": "narrator"}, 422, "voices"),
]


@pytest.mark.parametrize("change,status,needle", REFUSED, ids=[next(iter(c)) + f"={list(c.values())[0]}" for c, _, _
                                                             in REFUSED])
def test_what_cannot_be_honoured_is_refused_by_name(rt, client, app, voice, change, status, needle):
    r = speech(client, **{"response_format": "wav", **change})
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]
    assert app.state.editx.counters.in_flight == 0 and rt.engine_stats()["active_requests"] == 0


def test_a_voice_without_transcript_cannot_speak(client):
    data = base64.b64encode(speech_clips.require().read_bytes()[:-2000]).decode()  # other bytes, another voice
    uploaded = client.post("/v1/voices", json={"audio": data, "name": "mute"}).json()
    assert uploaded["has_text"] is False
    r = speech(client, voice="mute", response_format="wav")
    assert r.status_code == 400 and "without its transcript" in r.json()["error"]["message"]


@pytest.mark.parametrize("body,needle", [({"name": "bad name!"}, "name"), ({"text": " "}, "transcript is empty")])
def test_bad_voice_uploads(client, body, needle):
    data = base64.b64encode(speech_clips.require().read_bytes()).decode()
    r = client.post("/v1/voices", json={"audio": data, **body})
    assert r.status_code == 400 and needle in r.json()["error"]["message"]


def test_registry_names_move_and_leave_with_their_voice():
    reg = VoiceRegistry(max_bytes=3 * 400)
    voice = lambda: StoredVoice(np.zeros((1, 100), np.float32), 16000, "hi")  # noqa: E731  (400 bytes each)
    reg.put("a", voice(), "alloy")
    reg.put("b", voice(), "alloy")  # the name moves to b
    assert reg.names_of("a") == [] and reg.names_of("b") == ["alloy"] and reg.get("alloy") is reg.get("b")
    reg.put("b", StoredVoice(np.zeros((1, 100), np.float32), 16000, None))  # re-upload without text keeps it
    assert reg.get("b").text == "hi"
    reg.put("c", voice())
    reg.put("d", voice())  # over budget: "a" goes, then the oldest of the rest
    reg.put("e", voice())
    with pytest.raises(UnknownVoice, match="unknown voice 'alloy'"):
        reg.get("alloy", "voice")  # "b" was evicted and took its name


def test_voices_are_listed_and_deleted_with_their_cached_front_end(rt, client, voice):
    data = speech_clips.require().read_bytes()[:-4000]  # other bytes: a voice of its own
    uploaded = client.post("/v1/voices", json={"audio": base64.b64encode(data).decode(), "text": TRANSCRIPT,
                                               "name": "temporary"}).json()
    listed = {v["voice_id"]: v for v in client.get("/v1/voices").json()["voices"]}
    assert listed[uploaded["voice_id"]]["names"] == ["temporary"] and listed[voice["voice_id"]]["has_text"]
    cached = len(rt.voice_cache)
    r = client.delete("/v1/voices/temporary")
    assert r.status_code == 200 and r.json() == {"deleted": uploaded["voice_id"]}
    assert uploaded["voice_id"] not in {v["voice_id"] for v in client.get("/v1/voices").json()["voices"]}
    assert len(rt.voice_cache) == cached - 1  # the Runtime's front-end results of it are gone too
    assert speech(client, voice="temporary", response_format="wav").status_code == 404
    assert speech(client, voice=uploaded["voice_id"], response_format="wav").status_code == 404
    missing = client.delete("/v1/voices/temporary")
    assert missing.status_code == 404 and "unknown voice" in missing.json()["error"]["message"]
    assert speech(client, voice="narrator", response_format="pcm").status_code == 200  # others untouched
