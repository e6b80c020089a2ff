"""An open-loop HTTP/1.1 load generator on raw asyncio protocols, lean enough to offer thousands of
requests a second from one core beside the server it measures.

    records = asyncio.run(open_loop("http://127.0.0.1:8000", bodies, rate=500, seconds=10))
    # one Record per scheduled request: when it was due, its latency, status and answer

Requests go out on a fixed schedule, ``rate`` per second, whatever the answers do (a slow server is
not given time to catch up, as a closed loop would). At most ``concurrency`` are in flight, each on
its own keep-alive connection; one due while that many wait is not sent (``status`` None,
``dropped``). A latency runs from the *scheduled* time to the answer's last byte, so queueing
anywhere (this generator, the socket, the server) shows in it. An HTTP client library (httpx)
costs ~0.3 ms of CPU a request, more than the server itself at these rates: bodies here are
encoded once, and answers are parsed only as far as the status line and Content-Length.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

__all__ = ["Record", "open_loop", "request_bytes"]


@dataclass(slots=True)
class Record:
    due: float  # seconds since the load started
    latency: float  # seconds, from ``due`` to the answer's last byte (nan when not answered)
    status: int | None  # None: dropped (too many in flight) or failed (connection error)
    body: bytes = b""
    dropped: bool = False


def request_bytes(host: str, path: str, payload: dict[str, Any]) -> bytes:
    body = json.dumps(payload, separators=(",", ":")).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class _Connection(asyncio.Protocol):
    """One keep-alive connection, one request at a time. A protocol, not streams: an answer is one
    future resolved from ``data_received`` (streams cost two awaits and their buffers per answer,
    and at 10k req/s the client's lateness counted as the server's latency)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None or self.waiter.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        lines = bytes(self.buffer[:end]).split(b"\r\n")
        try:
            status = int(lines[0].split(b" ", 2)[1])
        except (IndexError, ValueError):
            self.waiter.set_exception(ValueError(f"not an HTTP status line: {lines[0][:80]!r}"))
            return
        length, keep = 0, True
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                keep = False
        total = end + 4 + length
        if len(self.buffer) < total:
            return
        body = bytes(self.buffer[end + 4 : total])
        del self.buffer[:total]
        self.waiter.set_result((status, body, keep))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionResetError("the server closed the connection"))

    async def exchange(self, request: bytes) -> tuple[int, bytes, bool]:
        """(status, body, keep-alive) of one request on this connection."""
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("the connection is closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def _connect(host: str | None, port: int | None) -> _Connection:
    _, connection = await asyncio.get_running_loop().create_connection(_Connection, host, port)
    return connection


async def open_loop(
    url: str,
    requests: Sequence[bytes],
    rate: float,
    seconds: float,
    concurrency: int = 64,
    keep_body: int = 0,
    timeout: float = 30.0,
    then: Sequence[tuple[float, float]] = (),
    preconnect: int = 0,
) -> list[Record]:
    """Send ``requests`` (encoded, cycled) at ``rate`` per second for ``seconds`` to ``url``'s
    host and port, then at each ``(rate, seconds)`` of ``then`` in turn; a Record per scheduled
    request, in schedule order. Only the bodies of the first ``keep_body`` answers of each status
    are kept (parsing them all would cost the schedule). ``preconnect`` connections are opened
    before the schedule starts, as long-lived clients would hold them (else a burst of connects
    at the start of a fast schedule is measured too)."""
    parts = urlsplit(url)
    # times from perf_counter: uvloop's loop.time() is the loop iteration's, in whole milliseconds
    clock = time.perf_counter
    offsets: list[float] = []
    for phase_rate, phase_seconds in ((rate, seconds), *then):
        begin = offsets[-1] + 1 / phase_rate if offsets else 0.0
        offsets += [begin + i / phase_rate for i in range(max(1, round(phase_rate * phase_seconds)))]
    n = len(offsets)
    records: list[Record | None] = [None] * n
    idle: list[_Connection] = []
    kept: dict[int, int] = {}
    in_flight = 0
    idle += await asyncio.gather(*(_connect(parts.hostname, parts.port) for _ in range(min(preconnect, concurrency))))
    start = clock() + 0.01

    async def one(i: int, due: float) -> None:
        nonlocal in_flight
        # from when it was due, or from when it went out if a timer fired early (uvloop's are
        # in whole milliseconds; waiting out the rest in a loop cost the server CPU)
        begin = min(due, clock())
        conn = idle.pop() if idle else None
        try:
            if conn is None:
                conn = await _connect(parts.hostname, parts.port)
            async with asyncio.timeout(timeout):  # not wait_for: a task per request
                status, body, keep = await conn.exchange(requests[i % len(requests)])
            answered = clock()
            if kept.get(status, 0) < keep_body:
                kept[status] = kept.get(status, 0) + 1
            else:
                body = b""
            records[i] = Record(due - start, answered - begin, status, body)
            if keep:
                idle.append(conn)
            else:
                conn.close()
        except (TimeoutError, OSError, ValueError):
            records[i] = Record(due - start, clock() - begin, None)
            if conn is not None:
                conn.close()
        finally:
            in_flight -= 1

    tasks = set()
    for i in range(n):
        due = start + offsets[i]
        if (delay := due - clock()) > 0:
            await asyncio.sleep(delay)
        if in_flight >= concurrency:
            records[i] = Record(due - start, float("nan"), None, dropped=True)
            continue
        in_flight += 1
        task = asyncio.create_task(one(i, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    while tasks:
        await asyncio.gather(*list(tasks))
    for conn in idle:
        conn.close()
    return records  # type: ignore[return-value]


def run(coro: Any) -> Any:
    """``asyncio.run`` on uvloop when it is installed (a third of the generator's CPU per request),
    with the garbage collector off: a collection over the records of earlier steps stalled the
    generator for ~50 ms, and its lateness counted as the server's latency."""
    gc.collect()
    gc.disable()
    try:
        try:
            import uvloop
        except ImportError:
            return asyncio.run(coro)
        return uvloop.run(coro)
    finally:
        gc.enable()
