"""uvicorn's httptools protocol, with each answer's head and body sent in one write.

    uvicorn.Config(app, http=OneWriteProtocol)

uvicorn writes a response's status line and headers, then its body: two ``send`` system calls
and two TCP segments for every answer, and, on loopback, the client woken twice. Under a flood of
small answers (a 503, a top 10) those writes were a third of the HTTP loop's time. Here the head
is held until the body's first write and both go out together; the rest of the protocol is
uvicorn's own.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

__all__ = ["OneWriteProtocol"]


class OneWriteProtocol(HttpToolsProtocol):
    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        cycle.transport = _HeadWithBody(self.transport)
        super()._start_asgi_task(cycle, app)


class _HeadWithBody:
    """One response's view of the connection: the first write (the head) is held and sent with
    the next; ``close`` sends what is held first. ``100 Continue`` goes out at once (the client
    waits for it before sending its body)."""

    __slots__ = ("_transport", "_head", "_first")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head: bytes | None = None
        self._first = True

    def write(self, data: bytes) -> None:
        if self._head is not None:
            data, self._head = self._head + data, None
        elif self._first and not data.startswith(b"HTTP/1.1 100 "):
            self._first, self._head = False, data
            return
        self._transport.write(data)

    def close(self) -> None:
        if self._head is not None:
            self._transport.write(self._head)
            self._head = None
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
