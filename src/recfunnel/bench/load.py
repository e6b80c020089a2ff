"""An open-loop HTTP/1.1 load generator on raw asyncio streams, lean enough to offer thousands of
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


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def exchange(self, request: bytes) -> tuple[int, bytes, bool]:
        """(status, body, keep-alive) of one request on this connection."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, keep = 0, True
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                keep = False
        body = await self.reader.readexactly(length) if length else b""
        return status, body, keep

    def close(self) -> None:
        self.writer.close()


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
    for reader, writer in await asyncio.gather(
        *(asyncio.open_connection(parts.hostname, parts.port) for _ in range(min(preconnect, concurrency)))
    ):
        idle.append(_Connection(reader, writer))
    start = clock() + 0.01

    async def one(i: int, due: float) -> None:
        nonlocal in_flight
        # from when it was due, or from when it went out if a timer fired early (uvloop's are
        # in whole milliseconds; waiting out the rest in a loop cost the server CPU)
        begin = min(due, clock())
        conn = idle.pop() if idle else None
        try:
            if conn is None:
                reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
                conn = _Connection(reader, writer)
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
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, IndexError):
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
