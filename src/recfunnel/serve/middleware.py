"""ASGI middleware of the service: admission under overload, a bounded JSON body, and a count and
latency of every request.

Both are plain ASGI (not Starlette's ``BaseHTTPMiddleware``), so they see every request, including
those answered before routing (413, 415) and those that end in an exception (counted as 500).
"""

from __future__ import annotations

import time
from email.message import Message as _ContentType

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from recfunnel.serve.batcher import Batcher
from recfunnel.serve.metrics import Metrics

__all__ = ["Admission", "BodyLimit", "RequestMetrics", "read_body", "replay"]

_WITH_BODY = ("POST", "PUT", "PATCH")
DRAIN_BYTES = 1 << 20
CLIENT_GONE = 499  # nginx's "client closed request": counted, never sent


class BodyLimit:
    """Reads a request's body before the app does: at most ``max_bytes`` kept (413 beyond, whether
    the client declared a ``Content-Length`` or streams it chunked) and only JSON (415 for a
    non-empty body of another content type). The app gets the body replayed.

    A refused body's rest is read and dropped, up to ``DRAIN_BYTES``, before the 413 goes out:
    closing a connection with unread bytes makes the kernel reset it, and the client may then lose
    the answer. A body declared larger than that is refused without reading a byte."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _WITH_BODY:
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                return await _reply(scope, receive, send, 400, f"Content-Length: not a byte count: {declared!r}")
            if int(declared) > self.max_bytes:
                if int(declared) <= DRAIN_BYTES and not await _drain(receive):
                    return
                return await _reply(
                    scope, receive, send, 413, f"body is {int(declared):,} bytes; the limit is {self.max_bytes:,}"
                )
        read = await read_body(receive, self.max_bytes)
        if read is None:
            return  # the client went away: nobody to answer
        body, more = read
        if len(body) > self.max_bytes:
            if more and not await _drain(receive):
                return
            return await _reply(scope, receive, send, 413, f"body is over the limit of {self.max_bytes:,} bytes")
        if body and not _is_json(headers.get("content-type")):
            return await _reply(
                scope,
                receive,
                send,
                415,
                f"Content-Type: expected application/json, got {headers.get('content-type') or 'none'}",
            )
        await self.app(scope, replay(body, receive), send)


async def read_body(receive: Receive, limit: int | None = None) -> tuple[bytes, bool] | None:
    """A request's body, read until its end or until it is over ``limit`` bytes: (body, whether
    more is to come); None if the client went away."""
    body = bytearray()
    more = True
    while more and (limit is None or len(body) <= limit):
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        more = message.get("more_body", False)
    return bytes(body), more


async def _drain(receive: Receive) -> bool:
    """Read and drop the rest of a body, up to DRAIN_BYTES; False if the client went away."""
    dropped, more = 0, True
    while more and dropped <= DRAIN_BYTES:
        message = await receive()
        if message["type"] == "http.disconnect":
            return False
        dropped += len(message.get("body", b""))
        more = message.get("more_body", False)
    return True


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    parsed = _ContentType()
    parsed["content-type"] = content_type
    subtype = parsed.get_content_subtype()
    return parsed.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` once, then waits on the client (for its disconnect)."""
    sent = False

    async def once() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return once


async def _reply(scope: Scope, receive: Receive, send: Send, status: int, error: str) -> None:
    # the unread rest of a refused body makes the connection unusable: say it will close
    headers = {"connection": "close"} if status == 413 else None
    await JSONResponse({"error": error}, status_code=status, headers=headers)(scope, receive, send)


class RequestMetrics:
    """Times every HTTP request, from its arrival to the end of the response, into ``metrics``,
    labelled by the matched route's template (``/similar-items/{item_id}``). A request that matched
    no route is labelled by its path when that is one of ``paths``, else ``unmatched``. One whose
    client went away before the answer began (mid-body, say) is counted as 499, not as a 500."""

    def __init__(self, app: ASGIApp, metrics: Metrics, paths: frozenset[str] = frozenset()) -> None:
        self.app, self.metrics, self.paths = app, metrics, paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500  # unless a response starts: an exception escaped the app
        started = False

        async def send_status(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        async def receive_disconnect() -> Message:
            nonlocal status
            message = await receive()
            if message["type"] == "http.disconnect" and not started:
                status = CLIENT_GONE  # the client's doing, not the server's
            return message

        try:
            await self.app(scope, receive_disconnect, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None)
            if route is None:
                route = scope["path"] if scope["path"] in self.paths else "unmatched"
            self.metrics.observe(route, scope["method"], status, time.perf_counter() - start)


class Admission:
    """Refuses a request to one of ``paths`` with 503 (and Retry-After) when the batcher would not
    admit it, before anything else reads it: under a flood, a refusal must cost far less than an
    answer (here ~0.1 ms, where parsing and validating the body would double it)."""

    def __init__(self, app: ASGIApp, batcher: Batcher, paths: frozenset[str]) -> None:
        self.app, self.batcher, self.paths = app, batcher, paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths or self.batcher.admits():
            return await self.app(scope, receive, send)
        if not await _drain(receive):  # read and dropped: the connection stays usable
            return
        refused = self.batcher.overloaded()
        await JSONResponse(
            {"error": str(refused)}, status_code=503, headers={"Retry-After": str(int(refused.retry_after + 0.999))}
        )(scope, receive, send)
