"""Dynamic micro-batching with bounded admission: the service's requests go through the funnel
together, and those that could not be answered in time are refused at once.

    batcher = Batcher(engine.run, max_batch=8, max_wait_ms=0, max_queue_ms=20)
    result, queued_s = await batcher.submit(Request(user_id=196, k=10))   # or raises Overloaded

One funnel call for a batch of 8 users costs about what 3 single calls do (the models' per-call
dispatch dominates one user's few microseconds of arithmetic). A batch starts when ``max_batch``
requests wait, or ``max_wait_ms`` after the first of them came (the way Triton's and TorchServe's
dynamic batchers do). The default wait is 0: a request that finds the funnel idle goes at once,
and under load batches fill by themselves while the one before runs.

``call`` returns a future of the batch's results. Up to ``MAX_OUT`` batches are out at once (in
the funnel process, :mod:`recfunnel.serve.engine`): the one running and a full one behind it, so
the funnel has the next at hand when it finishes; the rest gather meanwhile. An engine that runs
the batch on the loop's thread hands back a finished future; then ``gap_s`` after each batch lets
the loop read what came meanwhile before the next one starts.

Admission: a request is refused (:class:`Overloaded`, 503 with Retry-After) when the wait before
its batch could start is over ``max_queue_ms``, or when ``max_queue`` wait already. The wait is
the batch out now plus the full batches queued ahead, each timed by the recent batches of its size
(a batch's time grows far slower than its size: pricing the queue at the cost per request of the
small batches of a moderate load refused requests at 1,060 req/s that the server answered at
1,490). So admitted requests keep their latency under overload, the excess is answered at once,
and no backlog outlives the overload.

A stall is not an overload: when the funnel is late for a moment (a page fault, a busy core), the
queue grows as it would under overload, and refusing then turned away requests at 1,062 and 1,275
req/s that were answered at p99 24-29 ms. So the bound holds only once the wait has been over it
for ``GRACE_S`` (CoDel's idea: a standing queue, not a burst); until then requests are admitted up
to ``HARD`` times the bound. The grace ends when the wait falls under half the bound.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Batcher", "BatchStats", "Overloaded", "Stopped", "MAX_BATCH", "MAX_WAIT_MS", "MAX_QUEUE_MS", "MAX_QUEUE"]

MAX_BATCH = 8  # demo funnel, one core: 1.8 ms at batch 1, 0.58 ms each at 8, 0.53 at 16
MAX_WAIT_MS = 0.0  # an idle funnel takes a lone request at once (waiting 2 ms: p50 4.1, not 1.7 ms at 400 req/s)
MAX_QUEUE_MS = 20.0
MAX_QUEUE = 1024
GRACE_S = 0.05  # a wait over the bound for this long is an overload, not a burst
HARD = 1.6  # during the grace, the wait admitted is at most this many times the bound
MAX_OUT = 2  # batches out at once: the one running, and a full one behind it
RECENT = 15  # batches of each size whose median times that size
GAP_S = 0.0002  # after a batch, the loop reads what came meanwhile before the next batch starts


class Overloaded(Exception):
    """Refused: the queue is too long for the request to be answered in time."""

    def __init__(self, retry_after: float, max_queue_ms: float) -> None:
        super().__init__(f"overloaded: the queue holds over {max_queue_ms:g} ms of work; retry in {retry_after:g} s")
        self.retry_after = retry_after


class Stopped(Exception):
    """Refused: the service is shutting down."""


@dataclass(slots=True)
class _Job:
    request: Any
    future: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)
    started: float = 0.0


@dataclass
class BatchStats:
    """What the batcher has done: counters for /metrics."""

    batches: int = 0
    requests: int = 0
    refused_on_arrival: int = 0
    refused_stopping: int = 0
    sizes: dict[int, int] = field(default_factory=dict)  # batch size -> batches


class Batcher:
    def __init__(
        self,
        call: Callable[[list[Any]], asyncio.Future],
        *,
        max_batch: int = MAX_BATCH,
        max_wait_ms: float = MAX_WAIT_MS,
        max_queue_ms: float = MAX_QUEUE_MS,
        max_queue: int = MAX_QUEUE,
        gap_s: float = GAP_S,
    ) -> None:
        """``call(requests)`` starts one batch and returns a future of its results; a result that is
        an exception is raised to its request alone (an exception of the call, to the whole batch)."""
        for name, value in (("max_batch", max_batch), ("max_queue", max_queue)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        for name, value in (("max_wait_ms", max_wait_ms), ("max_queue_ms", max_queue_ms)):
            if not value >= 0:
                raise ValueError(f"{name}: expected a number >= 0, got {value!r}")
        self.call = call
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait_ms / 1000, max_queue
        self.max_queue_s, self.gap = max_queue_ms / 1000, gap_s
        self.stats = BatchStats()
        self._queue: deque[_Job] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0  # when the timer fires (perf_counter)
        self._recent: dict[int, deque[float]] = {}  # batch size -> seconds the last batches of that size took
        self._took: dict[int, float] = {}  # batch size -> their median (one stalled batch does not move it)
        self._last_end = 0.0
        self._over_since: float | None = None  # since when the wait has been over the bound
        self._out: deque[int] = deque()  # sizes of the batches out now, oldest first (at most two)
        self._stopping = False

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def queued(self) -> int:
        return len(self._queue)

    def stop(self) -> None:
        """Refuse new requests (Stopped); those queued are still answered."""
        self._stopping = True

    def expected_wait(self) -> float:
        """Seconds a request arriving now would wait before its batch could start: the batch out now,
        then the full batches queued ahead (it joins the partial one). With nothing ahead, none."""
        out = sum(self.batch_time(size) for size in self._out)
        return out + len(self._queue) // self.max_batch * self.batch_time(self.max_batch)

    def batch_time(self, size: int) -> float:
        """Seconds a batch of ``size`` takes, from recent batches: of that size, else scaled from
        the nearest size seen (per request when larger: an overestimate, on the safe side)."""
        if size <= 0 or not self._took:
            return 0.0
        if size in self._took:
            return self._took[size]
        nearest = min(self._took, key=lambda seen: abs(seen - size))
        return self._took[nearest] * max(1.0, size / nearest)

    def admits(self) -> bool:
        """Whether a request arriving now would be admitted (counted as refused if not)."""
        wait, now = self.expected_wait(), time.perf_counter()
        if wait <= self.max_queue_s / 2:
            self._over_since = None
        if len(self._queue) < self.max_queue:
            if wait <= self.max_queue_s:
                return True
            if self._over_since is None:
                self._over_since = now
            if wait <= HARD * self.max_queue_s and now - self._over_since < GRACE_S:
                return True  # a burst, so far
        self.stats.refused_on_arrival += 1
        return False

    def overloaded(self) -> Overloaded:
        return Overloaded(max(1.0, round(self.expected_wait(), 1)), self.max_queue_s * 1000)

    async def submit(self, request: Any) -> tuple[Any, float]:
        """(the result for ``request``, seconds it queued); raises Overloaded or Stopped at once
        when refused, or what ``call`` gave for it."""
        if self._stopping:
            self.stats.refused_stopping += 1
            raise Stopped
        if not self.admits():
            raise self.overloaded()
        loop = asyncio.get_running_loop()
        job = _Job(request, loop.create_future())
        self._queue.append(job)
        self._schedule(loop)
        result = await job.future
        return result, job.started - job.arrived

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run a batch when full, else when its first request has waited ``max_wait`` (and never
        right after a batch: what came meanwhile is read first). While one batch is out, a second
        full one may follow it, so that the funnel process has the next at hand when it finishes
        (a partial one waits: it may fill meanwhile)."""
        if not self._ready():
            return  # the batch out now schedules the next when it ends
        now = time.perf_counter()
        full = len(self._queue) >= self.max_batch
        due = max(now if full else self._queue[0].arrived + self.max_wait, self._last_end + self.gap)
        if self._timer is not None:
            if self._due <= due:
                return
            self._timer.cancel()
        self._due = due
        self._timer = loop.call_later(max(0.0, due - now), self._run, loop)

    def _ready(self) -> bool:
        if not self._out:
            return bool(self._queue)
        return len(self._out) < MAX_OUT and len(self._queue) >= self.max_batch

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if not self._ready():
            return
        jobs = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
        start = time.perf_counter()
        for job in jobs:
            job.started = start
        self._out.append(len(jobs))
        try:
            pending = self.call([j.request for j in jobs])
        except Exception as e:  # every request of the batch hears of it
            pending = loop.create_future()
            pending.set_exception(e)
        if pending.done():
            self._finish(jobs, start, pending, loop)
        else:
            pending.add_done_callback(lambda done: self._finish(jobs, start, done, loop))

    def _finish(self, jobs: list[_Job], start: float, pending: asyncio.Future, loop: asyncio.AbstractEventLoop) -> None:
        self._out.popleft()  # batches end in the order they went out
        try:
            results = pending.result()
        except Exception as e:  # every request of the batch hears of it
            results = [e] * len(jobs)
        end = time.perf_counter()
        recent = self._recent.setdefault(len(jobs), deque(maxlen=RECENT))
        recent.append(end - max(start, self._last_end))  # a batch sent behind another began when that one ended
        self._last_end = end
        self._took[len(jobs)] = statistics.median(recent)
        self.stats.batches += 1
        self.stats.requests += len(jobs)
        self.stats.sizes[len(jobs)] = self.stats.sizes.get(len(jobs), 0) + 1
        for job, result in zip(jobs, results):
            if job.future.done():  # the client went away and the request was cancelled
                continue
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)
        self._schedule(loop)
