"""The HTTP server (editx.server) over a dummy:tiny Runtime: formats, equality with the Python API,
voices, errors, overload, disconnects, and `editx serve` as a process."""
from __future__ import annotations

import asyncio
import base64
import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from asgi_driver import drive
import speech_clips
from audio_compare import assert_same_result
from fastapi.testclient import TestClient

from editx.server import ServerConfig, create_app
from editx.server import wire

PROMPT_TEXT = "His political stance was conservative, and he was particularly close to margaret thatcher."
MAX_NEW_TOKENS = 60  # ~1.4 s of audio: about a second per request on the CPU


@pytest.fixture(scope="module")
def prompt_path() -> Path:
    return speech_clips.require()


@pytest.fixture(scope="module")
def prompt_b64(prompt_path) -> str:
    return base64.b64encode(prompt_path.read_bytes()).decode()


@pytest.fixture(scope="module")
def client(rt):
    return TestClient(create_app(rt, model_name="dummy:tiny"))


def clone_body(prompt_b64: str, **extra) -> dict:
    body = {"prompt_audio": prompt_b64, "prompt_text": PROMPT_TEXT, "text": "Hello from the server.", "seed": 5,
            "sampling": {"max_new_tokens": MAX_NEW_TOKENS}}
    return {**body, **extra}


def reference_clone(rt, prompt_path, seed: int = 5) -> np.ndarray:
    sampling = rt.default_sampling(max_new_tokens=MAX_NEW_TOKENS)
    return rt.clone(prompt_path, PROMPT_TEXT, "Hello from the server.", seed=seed, sampling=sampling).samples


def assert_idle(rt, server_app, timeout: float = 10.0) -> None:
    """Every request ended: nothing in flight at the server, no engine request, every KV block free."""
    deadline = time.monotonic() + timeout
    while True:
        stats = rt.engine_stats()
        state = server_app.state.editx.counters
        if stats["active_requests"] == 0 and stats["free_blocks"] == stats["num_blocks"] and state.in_flight == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not idle: engine {stats}, server in flight {state.in_flight}")
        time.sleep(0.05)


# -------------------------------------------------------------------------------------------
# formats and equality with the Python API
# -------------------------------------------------------------------------------------------
def test_health_info(client):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/v1/info").json()
    assert info["sample_rate"] == 24000 and info["formats"] == list(wire.FORMATS)
    assert "emotion" in info["edit_types"] and info["model"] == "dummy:tiny"
    assert info["runtime"]["kv_cache"]["max_num_seqs"] == info["max_requests"] // 4  # Runtime.describe()


def test_f32_stream_equals_runtime_clone(rt, client, prompt_b64, prompt_path):
    expected = reference_clone(rt, prompt_path)
    r = client.post("/v1/clone", json=clone_body(prompt_b64, format="f32"))
    assert r.status_code == 200, r.text
    assert r.headers["x-sample-rate"] == "24000" and r.headers["content-type"] == "application/octet-stream"
    got = np.frombuffer(r.content, "<f4")
    # Same seed, run alone: the same engine path as rt.clone, so the same float32 samples exactly.
    np.testing.assert_array_equal(got, expected)


def test_streamed_wav_and_pcm16_hold_the_clipped_samples(rt, client, prompt_b64, prompt_path):
    expected = np.clip(reference_clone(rt, prompt_path), -1.0, 1.0)
    wav = client.post("/v1/clone", json=clone_body(prompt_b64)).content
    assert wav[:4] == b"RIFF" and wav[8:16] == b"WAVEfmt "
    assert int.from_bytes(wav[40:44], "little") == wire.UNKNOWN_SIZE  # open-ended: written before the end is known
    data, sr = sf.read(io.BytesIO(wav), dtype="float32")  # libsndfile reads an open-ended WAV to its end
    assert sr == 24000 and data.shape == expected.shape
    # 16-bit quantisation: at most one step (1/32768) away from the float samples.
    np.testing.assert_allclose(data, expected, atol=1.0 / 32768 + 1e-7, rtol=0)
    pcm = np.frombuffer(client.post("/v1/clone", json=clone_body(prompt_b64, format="pcm16")).content, "<i2")
    np.testing.assert_array_equal(pcm, np.frombuffer(wav[44:], "<i2"))


def test_whole_wav_has_exact_sizes(client, prompt_b64):
    r = client.post("/v1/clone", json=clone_body(prompt_b64, stream=False))
    assert r.status_code == 200
    n = (len(r.content) - 44) // 2
    assert int.from_bytes(r.content[40:44], "little") == 2 * n
    assert int.from_bytes(r.content[4:8], "little") == len(r.content) - 8
    streamed = client.post("/v1/clone", json=clone_body(prompt_b64)).content
    assert streamed[44:] == r.content[44:]


def test_pcm16_matches_libsndfile_within_one_step():
    x = np.random.default_rng(0).uniform(-1.2, 1.2, 10_001).astype(np.float32)  # includes out-of-range samples
    buf = io.BytesIO()
    sf.write(buf, np.clip(x, -1, 1), 24000, format="WAV", subtype="PCM_16")
    buf.seek(0)
    ours = np.frombuffer(wire.pcm16(x), "<i2").astype(int)
    theirs = sf.read(buf, dtype="int16")[0].astype(int)
    assert np.abs(ours - theirs).max() <= 1  # libsndfile 1.2: identical; older versions rounded x * 32767


def test_edit_streams(client, prompt_b64):
    body = {"audio": prompt_b64, "audio_text": PROMPT_TEXT, "edit_type": "emotion", "edit_info": "happy", "seed": 1,
            "sampling": {"max_new_tokens": MAX_NEW_TOKENS}, "format": "f32"}
    r = client.post("/v1/edit", json=body)
    assert r.status_code == 200, r.text
    assert len(r.content) > 0 and len(r.content) % 4 == 0


def test_uploaded_voice_gives_the_same_audio(client, prompt_b64):
    r = client.post("/v1/voices", json={"audio": prompt_b64})
    assert r.status_code == 200, r.text
    voice = r.json()
    assert voice["sample_rate"] > 0 and voice["duration_s"] > 1
    inline = client.post("/v1/clone", json=clone_body(prompt_b64, format="f32")).content
    body = clone_body(prompt_b64, format="f32")
    del body["prompt_audio"]
    by_id = client.post("/v1/clone", json={**body, "voice_id": voice["voice_id"]})
    assert by_id.status_code == 200, by_id.text
    assert by_id.content == inline


@pytest.mark.parametrize("overrides", [{"greedy": True, "max_new_tokens": 30},
                                       {"temperature": 1.3, "top_k": 7, "repetition_window": 4}])
def test_sampling_overrides_reach_the_request(rt, client, prompt_b64, prompt_path, overrides):
    import dataclasses

    sampling = {"max_new_tokens": MAX_NEW_TOKENS, **overrides}
    served = client.post("/v1/clone", json=clone_body(prompt_b64, format="f32", sampling=sampling)).content
    params = dataclasses.replace(rt.default_sampling(), **sampling)
    same = rt.clone(prompt_path, PROMPT_TEXT, "Hello from the server.", seed=5, sampling=params).samples
    np.testing.assert_array_equal(np.frombuffer(served, "<f4"), same)
    default = reference_clone(rt, prompt_path)
    assert same.shape != default.shape or not np.array_equal(same, default)  # the overrides changed something


# -------------------------------------------------------------------------------------------
# bad input: clear errors, nothing left behind
# -------------------------------------------------------------------------------------------
def _wav_b64(samples: np.ndarray, rate: int) -> str:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype="PCM_16")
    return base64.b64encode(buf.getvalue()).decode()


BAD_CLONES = [
    ("empty text", {"text": "  "}, 400, "text"),
    ("no audio at all", {"prompt_audio": None}, 400, "exactly one"),
    ("audio and voice id", {"voice_id": "abc"}, 400, "exactly one"),
    ("not base64", {"prompt_audio": "%%%not-base64%%%"}, 400, "base64"),
    ("not audio", {"prompt_audio": base64.b64encode(b"\x00\x01garbage" * 50).decode()}, 400, "decode"),
    ("8 kHz audio", {"prompt_audio": _wav_b64(np.zeros(16000, np.float32) + 0.1, 8000)}, 400, "16000 Hz"),
    ("unknown format", {"format": "mp3"}, 400, "format"),
    ("misspelt field", {"txt": "hi"}, 422, "txt"),
    ("bad temperature", {"sampling": {"temperature": -1.0}}, 400, "temperature"),
    ("unknown sampling field", {"sampling": {"top_q": 0.5}}, 422, "top_q"),
]


@pytest.mark.parametrize("case,change,status,needle", BAD_CLONES, ids=[c[0] for c in BAD_CLONES])
def test_bad_clone_requests_fail_clearly(rt, client, prompt_b64, case, change, status, needle):
    body = {k: v for k, v in {**clone_body(prompt_b64), **change}.items() if v is not None}
    r = client.post("/v1/clone", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert needle.lower() in error["message"].lower(), error
    assert_idle(rt, client.app)


def test_bad_edit_and_unknown_voice(rt, client, prompt_b64):
    r = client.post("/v1/edit", json={"audio": prompt_b64, "audio_text": "x", "edit_type": "teleport"})
    assert r.status_code == 400 and "edit_type" in r.json()["error"]["message"]
    body = clone_body(prompt_b64)
    del body["prompt_audio"]
    r = client.post("/v1/clone", json={**body, "voice_id": "0" * 32})
    assert r.status_code == 404 and "POST /v1/voices" in r.json()["error"]["message"]
    assert_idle(rt, client.app)
    assert client.post("/v1/clone", json=clone_body(prompt_b64)).status_code == 200  # the server still works


def test_bad_voice_upload_fails_clearly_and_frees_its_admission(rt, client):
    r = client.post("/v1/voices", json={"audio": base64.b64encode(b"RIFF-not-really" * 20).decode()})
    assert r.status_code == 400 and "decode" in r.json()["error"]["message"]
    assert client.app.state.editx.counters.in_flight == 0


def test_body_over_the_limit_is_413(rt, prompt_b64):
    small = TestClient(create_app(rt, ServerConfig(max_body_bytes=1000)))
    r = small.post("/v1/clone", json=clone_body(prompt_b64))
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]


def _metrics(text: str) -> dict[str, float]:
    """Samples of a Prometheus text exposition: {'name{labels}': value}; every line must parse."""
    samples = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert line.startswith(("# HELP ", "# TYPE ")), line
            continue
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)
    return samples


def test_metrics_count_requests_and_first_chunk_latency(rt, prompt_b64):
    app = create_app(rt)
    client = TestClient(app)
    assert client.post("/v1/clone", json=clone_body(prompt_b64, sampling={"max_new_tokens": 20})).status_code == 200
    assert client.post("/v1/clone", json=clone_body(prompt_b64, text=" ")).status_code == 400
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    m = _metrics(r.text)
    assert m["editx_requests_total"] == 2 and m["editx_requests_failed_total"] == 1
    assert m["editx_requests_in_flight"] == 0 and m["editx_requests_rejected_total"] == 0
    buckets = [v for k, v in m.items() if k.startswith("editx_first_chunk_seconds_bucket")]
    assert buckets == sorted(buckets) and buckets[-1] == m["editx_first_chunk_seconds_count"] == 1  # cumulative
    assert 0 < m["editx_first_chunk_seconds_sum"] < 600
    assert m["editx_engine_free_blocks"] == m["editx_engine_num_blocks"]  # the engine's gauges, idle
    keyed = TestClient(create_app(rt, ServerConfig(api_key="s3cret-key")))
    assert keyed.get("/metrics").status_code == 401
    assert keyed.get("/metrics", headers={"Authorization": "Bearer s3cret-key"}).status_code == 200


def test_api_key_guards_v1_but_not_health(rt, prompt_b64):
    keyed = TestClient(create_app(rt, ServerConfig(api_key="s3cret-key")))
    assert keyed.get("/health").status_code == 200  # load balancers probe without credentials
    for headers in ({}, {"Authorization": "Bearer wrong-key!"}, {"Authorization": "s3cret-key"}):
        r = keyed.get("/v1/info", headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", headers
        assert "API key" in r.json()["error"]["message"]
    assert keyed.post("/v1/clone", json=clone_body(prompt_b64)).status_code == 401  # refused before any work
    good = {"Authorization": "Bearer s3cret-key"}
    assert keyed.get("/v1/info", headers=good).status_code == 200
    r = keyed.post("/v1/clone", json=clone_body(prompt_b64, sampling={"max_new_tokens": 20}), headers=good)
    assert r.status_code == 200 and r.content[:4] == b"RIFF"


def test_cors_allows_the_configured_origins_only(rt):
    app = create_app(rt, ServerConfig(cors_origins=("https://app.example.com",), api_key="s3cret-key"))
    client = TestClient(app)
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    ok = client.options("/v1/clone", headers={"Origin": "https://app.example.com", **preflight})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://app.example.com"
    other = client.options("/v1/clone", headers={"Origin": "https://evil.example.com", **preflight})
    assert "access-control-allow-origin" not in other.headers
    r = client.get("/v1/info", headers={"Origin": "https://app.example.com", "Authorization": "Bearer s3cret-key"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "x-sample-rate" in r.headers["access-control-expose-headers"].lower()  # a browser may read the rate
    assert "access-control-allow-origin" not in TestClient(create_app(rt)).get(
        "/v1/info", headers={"Origin": "https://app.example.com"}).headers  # no CORS unless configured


def test_server_config_is_validated():
    with pytest.raises(ValueError, match="max_requests"):
        ServerConfig(max_requests=0)
    with pytest.raises(ValueError, match="max_body_bytes"):
        ServerConfig(max_body_bytes=-5)
    with pytest.raises(ValueError, match="api_key"):
        ServerConfig(api_key="short")
    with pytest.raises(ValueError, match="cors_origins"):
        ServerConfig(cors_origins="https://app.example.com")  # a bare string, not a sequence of origins


# -------------------------------------------------------------------------------------------
# concurrency, overload, disconnects
# -------------------------------------------------------------------------------------------
def test_overload_gets_503_and_the_held_stream_is_unaffected(rt, prompt_b64):
    app = create_app(rt, ServerConfig(max_requests=1, retry_after_s=2))

    async def scenario():
        started, release = asyncio.Event(), asyncio.Event()
        held = asyncio.create_task(drive(app, "/v1/clone", clone_body(prompt_b64, format="f32"),
                                         disconnect_after_chunks=10_000, first_body=started, hold=release))
        await started.wait()  # request 1 is streaming: the server is at its limit
        rejected = await drive(app, "/v1/clone", clone_body(prompt_b64))
        release.set()
        return await held, rejected

    held, rejected = asyncio.run(scenario())
    assert rejected.status == 503 and rejected.headers["retry-after"] == "2"
    assert held.status == 200 and held.complete and held.error is None
    assert app.state.editx.counters.rejected == 1
    assert_idle(rt, app)


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
def test_client_disconnect_cancels_the_request(rt, prompt_b64, spec_version):
    """A client that leaves after the first bytes: its engine request ends and its KV blocks return."""
    app = create_app(rt)
    long_body = clone_body(prompt_b64, sampling={"max_new_tokens": 2000})  # far longer than the test waits
    start = time.monotonic()
    result = asyncio.run(drive(app, "/v1/clone", long_body, spec_version=spec_version, disconnect_after_chunks=2))
    assert result.status == 200 and not result.complete
    assert_idle(rt, app, timeout=20)
    assert time.monotonic() - start < 60  # it did not run its 2,000 tokens (~40 s on this CPU) to the end
    assert app.state.editx.counters.cancelled == 1


def test_client_leaving_before_the_first_chunk_cancels_the_request(rt, prompt_b64):
    """A client that gives up while its request waits (front end, queue, first chunk) frees its place at once."""
    app = create_app(rt)
    result = asyncio.run(drive(app, "/v1/clone", clone_body(prompt_b64, sampling={"max_new_tokens": 2000}),
                               leave_at_once=True))
    assert result.status == 499 and result.complete
    assert app.state.editx.counters.cancelled == 1 and app.state.editx.counters.failed == 0
    assert_idle(rt, app)


def test_concurrent_requests_equal_sequential_ones(rt, prompt_b64):
    app = create_app(rt)
    seeds = (11, 12, 13)
    bodies = [clone_body(prompt_b64, seed=s, format="f32") for s in seeds]

    async def together():
        return await asyncio.gather(*(drive(app, "/v1/clone", b) for b in bodies))

    concurrent = [b"".join(x.body) for x in asyncio.run(together())]
    one_by_one = [b"".join(asyncio.run(drive(app, "/v1/clone", b)).body) for b in bodies]
    # Tokens are identical for fixed seeds; batched decoder chunks differ from single-stream ones only by
    # float reduction order (README), so this compares audio as the engine tests do.
    for a, b in zip(concurrent, one_by_one):
        assert_same_result(np.frombuffer(a, "<f4"), np.frombuffer(b, "<f4"))
    assert_idle(rt, app)


class _FailingRuntime:
    """Stands in for a Runtime whose stream breaks after its first chunk (the server's side of it)."""

    class config:
        max_num_seqs = 4

    def default_sampling(self, **_):
        return None

    async def astream_clone(self, *args, **kwargs):
        from editx.types import AudioChunk

        yield AudioChunk(np.zeros(240, np.float32), 24000, 0, False)
        raise RuntimeError("decoder exploded")


def test_failure_after_the_first_chunk_aborts_the_response(prompt_b64):
    app = create_app(_FailingRuntime())
    result = asyncio.run(drive(app, "/v1/clone", clone_body(prompt_b64, sampling=None)))
    assert result.status == 200 and not result.complete  # never a short "complete" file
    assert isinstance(result.error, RuntimeError)
    counters = app.state.editx.counters
    assert counters.failed == 1 and counters.in_flight == 0


# -------------------------------------------------------------------------------------------
# `editx serve` as a process
# -------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_editx_serve_answers_http_and_drains_on_sigterm(prompt_b64):
    """A process: /health, a streamed clone; SIGTERM in mid-stream lets the stream finish (a rolling
    deploy must not cut audio off), then the server exits."""
    port = _free_port()
    cmd = [sys.executable, "-m", "editx.cli", "serve", "--model", "dummy:tiny", "--port", str(port), "--quiet",
           "--max-num-seqs", "4", "--shutdown-timeout", "60"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"server did not come up: {proc.communicate(timeout=5)[0]!r}")
                time.sleep(0.5)
        # ~5 s of audio: its stream runs for seconds after the first chunk on the CPU
        body = clone_body(prompt_b64, sampling={"max_new_tokens": 200})
        request = urllib.request.Request(base + "/v1/clone", data=__import__("json").dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as r:
            assert r.headers["Content-Type"] == "audio/wav"
            assert r.read(4) == b"RIFF"
            proc.terminate()  # SIGTERM while the stream runs
            rest = r.read()  # http.client raises IncompleteRead if the chunked body is cut off
        assert len(rest) > 40 + 2 * 24000  # more than a second of audio came after the signal
        assert proc.wait(timeout=60) is not None
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_editx_serve_refuses_a_missing_api_key_before_loading():
    env = {k: v for k, v in os.environ.items() if k != "EDITX_TEST_NO_SUCH_KEY"}
    proc = subprocess.run([sys.executable, "-m", "editx.cli", "serve", "--model", "dummy:tiny", "--api-key-env",
                           "EDITX_TEST_NO_SUCH_KEY"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and "EDITX_TEST_NO_SUCH_KEY is not set" in proc.stderr
    assert "loading" not in proc.stderr  # failed before spending time on the model


def test_histogram_buckets_are_cumulative_and_inclusive():
    from editx.server.metrics import Histogram

    h = Histogram(bounds=(0.1, 0.5, 1.0))
    for value in (0.05, 0.1, 0.3, 2.0):
        h.observe(value)
    assert h.counts == [2, 3, 3] and h.count == 4 and abs(h.total - 2.45) < 1e-12  # 0.1 falls in le="0.1"


def test_split_clone_streams_the_pieces_as_one(rt, client, prompt_b64, prompt_path):
    """`split: true` speaks a text piece by piece (pieces of <= 300 characters: two here); the body is the
    Runtime's split clone."""
    text = " ".join(f"Sentence number {i} is spoken here." for i in range(12))  # ~420 characters: 2 pieces
    sampling = rt.default_sampling(max_new_tokens=20)
    expected = rt.clone(prompt_path, PROMPT_TEXT, text, seed=5, sampling=sampling, split=True)
    r = client.post("/v1/clone", json=clone_body(prompt_b64, text=text, split=True, format="f32",
                                                  sampling={"max_new_tokens": 20}))
    assert r.status_code == 200, r.text
    assert_same_result(np.frombuffer(r.content, dtype="<f4"), expected.samples)
    assert expected.info["generated_tokens"] <= 2 * 20  # two pieces of at most 20 tokens each
