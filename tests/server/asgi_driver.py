"""Drive an ASGI app by hand: stream a response chunk by chunk and disconnect mid-way (the test client
buffers whole responses, so it cannot show what a client that goes away does to the server)."""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class Exchange:
    """What one request got back."""

    status: Optional[int] = None
    headers: dict = field(default_factory=dict)
    body: list[bytes] = field(default_factory=list)
    complete: bool = False          # the final `more_body: False` message arrived
    error: Optional[BaseException] = None


async def drive(app, path: str, payload: dict, *, spec_version: str = "2.3",
                disconnect_after_chunks: Optional[int] = None,
                first_body: Optional[asyncio.Event] = None,
                hold: Optional[asyncio.Event] = None, leave_at_once: bool = False) -> Exchange:
    """POST `payload` as JSON to `path`.

    disconnect_after_chunks: after that many non-empty body messages the client goes away: `receive()`
        returns http.disconnect (spec < 2.4, Starlette listens for it) and `send()` raises OSError
        (what a 2.4 server does on a closed socket).
    first_body: set when the first non-empty body message arrives; hold: if given, the client waits
        for it before disconnecting.
    leave_at_once: the client disconnects right after sending its request (before any answer).
    """
    data = json.dumps(payload).encode()
    gone = asyncio.Event()
    if leave_at_once:
        gone.set()
    sent_request = False
    result = Exchange()

    async def receive():
        nonlocal sent_request
        if not sent_request:
            sent_request = True
            return {"type": "http.request", "body": data, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        if gone.is_set() and spec_version >= "2.4" and not leave_at_once:
            raise OSError("client disconnected")
        if message["type"] == "http.response.start":
            result.status = message["status"]
            result.headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
            return
        body = message.get("body", b"")
        if body:
            result.body.append(body)
            if first_body is not None:
                first_body.set()
        if not message.get("more_body", False):
            result.complete = True
            gone.set()  # a finished response: the server's receive() reports the end, like uvicorn
        elif disconnect_after_chunks is not None and len(result.body) >= disconnect_after_chunks:
            if hold is not None:
                await hold.wait()
            gone.set()

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": spec_version}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "headers": [(b"content-type", b"application/json"),
                                          (b"content-length", str(len(data)).encode())],
             "client": ("127.0.0.1", 1234), "server": ("127.0.0.1", 8000)}
    try:
        await app(scope, receive, send)
    except Exception as exc:  # an aborted response surfaces here (a real server closes the connection)
        result.error = exc
    return result
