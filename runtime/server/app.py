"""The HTTP server: streamed clone / edit over one shared Runtime (FastAPI, run by `editx serve`).

    POST /v1/clone   {"prompt_audio": b64 | "voice_id": id, "prompt_text", "text", ...}  -> audio
    POST /v1/edit    {"audio": b64 | "voice_id": id, "audio_text", "edit_type", "edit_info", ...} -> audio
    POST /v1/voices  {"audio": b64, "text"?, "name"?} -> {"voice_id", ...}   (upload a prompt once)
    GET  /v1/voices, DELETE /v1/voices/{id or name}   (list; forget a recording and its cached results)
    POST /v1/audio/speech  OpenAI's body {"input", "voice", "response_format", "stream_format"} -> audio or
                           speech events (openai_speech.py)
    GET  /health, /v1/info, /v1/stats, /metrics (Prometheus text format)

Audio responses stream by default (`"stream": true`): the status and headers leave when the first
chunk exists, so an error before it (bad audio, empty text, unknown edit type) is a proper 4xx with
a JSON body; the body then carries each chunk as the engine emits it (`wav` with an open-ended
header, `pcm16` or `f32`). A failure after the first chunk can no longer change the status: the
server aborts the response (the client sees an incomplete chunked body, never a short "complete"
file) and logs it. A client that disconnects cancels its request at once (its KV blocks and decoder
caches return to the pool). Requests beyond `ServerConfig.max_requests` get 503 + Retry-After
instead of an unbounded queue.

Every handler is async and never blocks the event loop: the front end runs in worker threads
(`Runtime.astream_*`), the LLM and decoder on the engine's threads.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import time
from typing import AsyncIterator, Callable, Optional

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..errors import CheckpointError, EditXError, InvalidInputError
from ..frontend.audio_io import load_audio
from ..models.text import EDIT_TYPES
from ..types import OUTPUT_SAMPLE_RATE, AudioChunk
from . import openai_speech, wire
from .metrics import CONTENT_TYPE as METRICS_TYPE
from .metrics import render as render_metrics
from .schemas import CloneBody, EditBody, SamplingBody, SpeechBody, VoiceBody
from .state import Admission, Counters, Overloaded, ServerConfig, StoredVoice, UnknownVoice, VoiceRegistry

log = logging.getLogger("editx.server")

ChunkSource = Callable[[], AsyncIterator[AudioChunk]]


def create_app(runtime, config: Optional[ServerConfig] = None, model_name: str = "") -> FastAPI:
    """A FastAPI app serving `runtime` (an `editx.Runtime`; the caller keeps ownership and closes it)."""
    from .. import __version__

    config = config or ServerConfig()
    server = _Server(runtime, config, model_name)
    app = FastAPI(title="editx-rt", version=__version__,
                  description="Step-Audio-EditX: streamed voice cloning and speech editing")
    app.state.editx = server
    _install_error_handlers(app, config)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/info")
    async def info() -> dict:
        return server.info()

    @app.get("/v1/stats")
    async def stats() -> dict:
        return {"server": server.counters.as_dict(), "voices": len(server.voices),
                "engine": runtime.engine_stats()}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(render_metrics(server.counters, runtime.engine_stats()), media_type=METRICS_TYPE)

    @app.post("/v1/voices")
    async def upload_voice(body: VoiceBody) -> dict:
        return await server.upload_voice(body)

    @app.get("/v1/voices")
    async def list_voices() -> dict:
        return {"voices": server.voices.describe()}

    @app.delete("/v1/voices/{ref}")
    async def delete_voice(ref: str) -> dict:
        """Forget an uploaded voice (by id or name): its recording, its names and the Runtime's cached
        front-end results of it."""
        voice_id, voice = server.voices.remove(ref)
        await asyncio.to_thread(runtime.forget_voice, voice.audio)
        return {"deleted": voice_id}

    @app.post("/v1/clone")
    async def clone(body: CloneBody, request: Request) -> Response:
        audio = server.audio_input(body.prompt_audio, body.voice_id, "prompt_audio")
        sampling = server.sampling(body.sampling)
        return await server.respond(
            lambda: runtime.astream_clone(audio, body.prompt_text, body.text, seed=body.seed, sampling=sampling,
                                          priority=body.priority, split=body.split), body.format, body.stream,
            request)

    @app.post("/v1/edit")
    async def edit(body: EditBody, request: Request) -> Response:
        audio = server.audio_input(body.audio, body.voice_id, "audio")
        sampling = server.sampling(body.sampling)
        return await server.respond(
            lambda: runtime.astream_edit(audio, body.audio_text, body.edit_type, body.edit_info, text=body.text,
                                         n_iter=body.n_iter, seed=body.seed, sampling=sampling,
                                         priority=body.priority), body.format, body.stream, request)

    @app.post("/v1/audio/speech")
    async def speech(body: SpeechBody, request: Request) -> Response:
        fmt = openai_speech.wire_format(body)
        voice = server.voices.get(body.voice, "voice")
        text = openai_speech.prompt_text(voice, body.voice)
        sampling = server.sampling(body.sampling)
        return await server.respond(
            lambda: runtime.astream_clone(voice.audio, text, body.input, seed=body.seed, sampling=sampling,
                                          split=body.split), fmt, True, request,
            openai_speech.framing(body, fmt, OUTPUT_SAMPLE_RATE))

    return app


class _Server:
    """The app's shared state and request handling (one per app; see module doc)."""

    def __init__(self, runtime, config: ServerConfig, model_name: str) -> None:
        self.runtime, self.config, self.model_name = runtime, config, model_name
        self.counters = Counters()
        limit = config.max_requests or 4 * runtime.config.max_num_seqs
        self.admission = Admission(limit, self.counters)
        self.voices = VoiceRegistry(config.max_voice_bytes)

    def info(self) -> dict:
        cfg = self.runtime.config
        return {"model": self.model_name, "device": str(cfg.device), "dtype": str(cfg.dtype).removeprefix("torch."),
                "sample_rate": OUTPUT_SAMPLE_RATE, "channels": 1, "formats": list(wire.FORMATS),
                "edit_types": list(EDIT_TYPES), "max_requests": self.admission.limit,
                "runtime": self.runtime.describe()}

    # -- inputs -------------------------------------------------------------------------
    def audio_input(self, b64: Optional[str], voice_id: Optional[str], field: str):
        """The request's audio: file bytes from base64, or an uploaded voice's samples."""
        if (b64 is None) == (voice_id is None):
            raise InvalidInputError(f"{field} / voice_id: give exactly one of them")
        if voice_id is not None:
            return self.voices.get(voice_id).audio
        return wire.decode_base64_audio(b64, field, self.config.max_body_bytes)

    def sampling(self, body: Optional[SamplingBody]):
        """SamplingParams: the runtime's defaults with the request's overrides (validated there)."""
        if body is None:
            return self.runtime.default_sampling()
        params = self.runtime.default_sampling(greedy=body.greedy, max_new_tokens=body.max_new_tokens)
        overrides = {k: v for k, v in body.model_dump().items()
                     if v is not None and k not in ("greedy", "max_new_tokens")}
        try:
            return dataclasses.replace(params, **overrides)
        except TypeError as exc:  # a value pydantic let through that SamplingParams cannot take
            raise InvalidInputError(f"sampling: {exc}") from exc

    async def upload_voice(self, body: VoiceBody) -> dict:
        data = wire.decode_base64_audio(body.audio, "audio", self.config.max_body_bytes)
        text = _transcript(body.text)
        if body.name is not None:
            self.voices.check_name(body.name)
        voice_id = self.voices.key(data)
        self.admission.enter()  # the front end is real work: uploads count against max_requests too
        try:
            wav, sr = await asyncio.to_thread(load_audio, data, what="audio")
            samples = wav.numpy()
            # Run the front end now, so the first request naming this voice skips it (Runtime voice cache).
            await asyncio.to_thread(self.runtime.encode_voice, (samples, sr))
        finally:
            self.admission.leave()
        stored = self.voices.put(voice_id, StoredVoice(samples, sr, text), body.name)
        return {"voice_id": voice_id, "names": self.voices.names_of(voice_id),
                "has_text": stored.text is not None, "duration_s": round(samples.shape[-1] / sr, 3),
                "sample_rate": sr}

    # -- responses ------------------------------------------------------------------------
    async def respond(self, make_chunks: ChunkSource, fmt: str, stream: bool, request: Request,
                      framing=None) -> Response:
        """Run one request: admit it, wait for its first chunk (errors so far become 4xx/5xx; a client
        that leaves meanwhile cancels it), then stream the rest or collect everything into one body.
        framing: how a streamed body carries the chunks (default `wire.RawFraming`: the bytes)."""
        framing = framing or wire.RawFraming(fmt, OUTPUT_SAMPLE_RATE)
        self.admission.enter()
        session = _Session(self.admission)
        start = time.perf_counter()
        try:
            session.chunks = make_chunks()
            first = await _unless_client_leaves(_first_chunk(session.chunks), request)
            self.counters.record_first_chunk((time.perf_counter() - start) * 1e3)
            headers = {"X-Sample-Rate": str(OUTPUT_SAMPLE_RATE), "X-Audio-Format": fmt}
            if stream:  # from here the response owns the session and closes it however it ends
                return _SessionResponse(self._stream_body(first, session, framing), session,
                                        media_type=framing.media_type, headers=headers)
            samples = await _collect(first, session.chunks)
            await session.close()
            return Response(wire.whole(samples, fmt, OUTPUT_SAMPLE_RATE), media_type=framing.media_type,
                            headers=headers)
        except ClientGone:
            self.counters.cancelled += 1
            await session.close()
            return _error(499, "client_closed", "the client closed the connection before the first chunk")
        except BaseException:
            self.counters.failed += 1
            await session.close()
            raise

    async def _stream_body(self, first: AudioChunk, session: "_Session", framing):
        """The streamed response body: the framing's start (a WAV header), every chunk as it arrives,
        then its end (SSE: the done event with the usage)."""
        try:
            start = framing.start()
            if start:
                yield start
            chunk = first
            while True:
                data = framing.chunk(chunk.samples)
                if data:
                    yield data
                if chunk.is_last:
                    session.finished = True
                    end = framing.end(chunk.usage)
                    if end:
                        yield end
                    return
                chunk = await anext(session.chunks)
        except StopAsyncIteration:  # the engine guarantees an is_last chunk: a missing one is a bug
            self.counters.failed += 1
            log.error("stream ended without its last chunk; aborting the response")
            raise EditXError("stream ended without its last chunk") from None
        except (asyncio.CancelledError, GeneratorExit):  # the client went away
            self.counters.cancelled += 1
            raise
        except Exception:
            self.counters.failed += 1
            log.exception("request failed after its first chunk; aborting the response")
            raise
        finally:
            await session.close()


def _transcript(text: Optional[str]) -> Optional[str]:
    if text is not None and not text.strip():
        raise InvalidInputError("text: the transcript is empty; give what is said in the audio, or leave it out")
    return None if text is None else text.strip()


class _Session:
    """One admitted request's resources: its chunk stream and its admission slot. `close()` is
    idempotent and safe inside a cancelled task: it cancels the engine request if it still runs."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.chunks: Optional[AsyncIterator[AudioChunk]] = None
        self.finished = False
        self._closed = False

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self.chunks is not None:
                with anyio.CancelScope(shield=True):  # runs even inside Starlette's cancelled task group
                    await self.chunks.aclose()
        finally:
            self.admission.leave()


class _SessionResponse(StreamingResponse):
    """StreamingResponse that closes its request session however the response ends. Starlette
    cancels the body on a disconnect under ASGI spec < 2.4 (uvicorn); under 2.4 a failed send just
    propagates, and a body never started never runs its own clean-up."""

    def __init__(self, body, session: _Session, **kwargs) -> None:
        super().__init__(body, **kwargs)
        self.session = session

    async def stream_response(self, send) -> None:
        try:
            await super().stream_response(send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()
                await self.session.close()


class ClientGone(Exception):
    """The client disconnected while its request waited for its first chunk."""


async def _unless_client_leaves(work, request: Request):
    """Await `work`, or cancel it (and raise ClientGone) if the client disconnects first: a request
    queued behind a full engine must not keep its place after its client timed out. The body is
    read already, so the next ASGI message can only say the client left."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        gone.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    raise ClientGone()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _first_chunk(chunks: AsyncIterator[AudioChunk]) -> AudioChunk:
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        raise EditXError("the request produced no audio chunk") from None


async def _collect(first: AudioChunk, chunks: AsyncIterator[AudioChunk]):
    import numpy as np

    parts = [first.samples]
    last = first.is_last
    async for chunk in chunks:
        parts.append(chunk.samples)
        last = chunk.is_last
    if not last:
        raise EditXError("stream ended without its last chunk")
    return np.concatenate(parts).astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------
# Errors: one JSON shape, {"error": {"type": ..., "message": ...}}
# ---------------------------------------------------------------------------------------
def _error(status: int, kind: str, message: str, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status, headers=headers)


def _handler(status: int, kind: str):
    async def handle(_request, exc: Exception) -> JSONResponse:
        return _error(status, kind, str(exc))

    return handle


# Most specific first: UnknownVoice is an InvalidInputError, CheckpointError an EditXError.
_STATUS = ((UnknownVoice, 404, "unknown_voice"), (InvalidInputError, 400, "invalid_input"),
           (CheckpointError, 500, "model_error"), (EditXError, 500, "server_error"))


def _install_error_handlers(app: FastAPI, config: ServerConfig) -> None:
    @app.exception_handler(Overloaded)
    async def overloaded(_request, exc: Overloaded):
        return _error(503, "overloaded", str(exc), {"Retry-After": str(config.retry_after_s)})

    for exc_type, status, kind in _STATUS:
        app.add_exception_handler(exc_type, _handler(status, kind))

    @app.exception_handler(RequestValidationError)
    async def validation(_request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return _error(422, "invalid_request", problems)

    app.add_middleware(_BodyLimit, max_bytes=config.max_body_bytes)
    if config.api_key is not None:
        app.add_middleware(_BearerAuth, key=config.api_key)
    if config.cors_origins:  # added last = outermost: preflight requests carry no credentials
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"],
                           expose_headers=["X-Sample-Rate", "X-Audio-Format"])


class _BodyLimit:
    """413 for a declared Content-Length over the limit, before the body is read. Plain ASGI, not
    Starlette's BaseHTTPMiddleware: that one re-wraps streamed bodies and would end an aborted
    stream with a clean final chunk (a truncated file the client takes as complete)."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            length = dict(scope.get("headers") or []).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.max_bytes:
                response = _error(413, "too_large", f"request body of {int(length)} bytes exceeds the limit of "
                                                    f"{self.max_bytes} bytes")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _BearerAuth:
    """401 unless a /v1/ or /metrics request carries `Authorization: Bearer <key>` (constant-time
    comparison; Prometheus sends one with `authorization: {credentials: ...}`); /health stays open.
    Plain ASGI, like `_BodyLimit`."""

    def __init__(self, app, key: str) -> None:
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and (scope["path"].startswith("/v1/") or scope["path"] == "/metrics"):
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = _error(401, "unauthorized", "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                  {"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
