"""Where the service's funnel runs: in a process of its own beside the HTTP loop (what ``serve``
uses), or on the loop's own thread (an app made in-process, as tests and notebooks do).

    engine = ProcessEngine(live, reloader)    # forks the funnel process; before the loop starts
    engine.attach(loop)                       # in the loop: replies arrive as the pipe fills
    outs = await engine.run(jobs)             # one batch: per job a result or the exception to raise

Why a process: the funnel is CPU- and Python-bound. On the loop's thread every batch (a few ms)
stopped the loop, so a refusal waited for the batch under way (503s took p50 10 ms at twice the
saturating rate) and the HTTP work and the funnel shared one core; on a thread beside the loop,
both fought over the GIL and a batch took 2.4x as long. In a process of its own the funnel has a
core to itself, the loop only reads, refuses and answers, and a batch costs a pickle each way.
The funnel process is forked from the loaded server, so models and index pages stay shared.

Jobs are :class:`~recfunnel.funnel.pipeline.Request` (through the funnel together) and
:class:`Similar` (nearest items, each alone). A job's exception is :class:`Invalid` (the request's
fault, 422), ``KeyError`` (an unknown item, 404) or :class:`Failed` (logged where it happened, 500).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from typing import Any

from recfunnel.errors import RecfunnelError
from recfunnel.funnel.pipeline import Request
from recfunnel.serve.live import Live
from recfunnel.serve.metrics import memory_mib
from recfunnel.serve.schema import json_type

__all__ = ["InlineEngine", "ProcessEngine", "Similar", "Invalid", "Failed", "EngineState", "run_batch"]

log = logging.getLogger("recfunnel.serve")

NICE = 5  # the funnel process's niceness above the front's


@dataclass(frozen=True)
class Similar:
    item_id: Any
    k: int


class Invalid(Exception):
    """A request the funnel cannot take: 422 with this message."""


class Failed(Exception):
    """The funnel failed on a request (logged where it happened): 500 with this message."""


@dataclass(frozen=True)
class EngineState:
    """What the front needs to know of the models served, after every batch."""

    version: str
    reloads: int = 0
    refused: int = 0


def _state(live: Live) -> EngineState:
    return EngineState(live.current.version, live.reloads, live.refused)


def _health(live: Live) -> dict[str, Any]:
    funnel = live.current.funnel
    return {
        "items": len(funnel.index.vectors),
        "ranker": funnel.ranker is not None,
        "index": funnel.index.vectors.kind,
        **live.health(),
    }


class InlineEngine:
    """The funnel on the calling (loop's) thread: ``run`` has finished when it returns."""

    def __init__(self, live: Live, reload: Callable[[], dict[str, Any]] | None = None) -> None:
        self.live, self._reload = live, reload
        self.state = _state(live)
        self.pid = os.getpid()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        pass

    def run(self, jobs: list[Any]) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        future.set_result(run_batch(self.live, jobs))
        self.state = _state(self.live)
        return future

    async def health(self) -> dict[str, Any]:
        return _health(self.live)

    @property
    def can_reload(self) -> bool:
        return self._reload is not None

    async def reload(self) -> dict[str, Any]:
        assert self._reload is not None
        answer = await asyncio.to_thread(self._reload)
        self.state = _state(self.live)
        return answer

    def trigger(self) -> None:
        pass

    def close(self) -> None:
        pass


class ProcessEngine:
    """The funnel in a forked process, fed batches over a pipe; one batch there at a time."""

    def __init__(self, live: Live, reloader: Any, on_reload: Callable[[], None] | None = None) -> None:
        """``reloader`` (a :class:`~recfunnel.serve.reload.Reloader` of ``live``) runs in the funnel
        process; ``on_reload`` is called here after a reload asked for over HTTP."""
        self.live, self.reloader, self.on_reload = live, reloader, on_reload
        self.state = _state(live)
        self.pid = 0
        self._conn: Connection | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._tags = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    can_reload = True

    def start(self, close_in_child: Any = None) -> None:
        """Fork the funnel process (before any event loop runs in this one)."""
        front, back = Pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                front.close()
                if close_in_child is not None:
                    close_in_child.close()  # the listening socket is the front's alone
                _funnel_process(back, self.live, self.reloader)
                code = 0
            except BaseException:
                log.exception("the funnel process failed")
            finally:
                os._exit(code)
        back.close()
        self._conn, self.pid = front, pid

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._conn is not None, "start() first"
        self._loop = loop
        loop.add_reader(self._conn.fileno(), self._read)

    def run(self, jobs: list[Any]) -> asyncio.Future:
        return self._ask("batch", jobs)

    async def health(self) -> dict[str, Any]:
        return await self._ask("health", None)

    async def reload(self) -> dict[str, Any]:
        answer = await self._ask("reload", None)
        if self.on_reload is not None:
            self.on_reload()
        return answer

    def trigger(self) -> None:
        """Check for new versions soon (e.g. on SIGHUP)."""
        if self._conn is not None and not self._closed:
            self._conn.send(("check", -1, None))

    def close(self) -> None:
        """End the funnel process (it finishes the batch it runs) and wait for it."""
        if self._closed or self._conn is None:
            return
        self._closed = True
        if self._loop is not None:
            self._loop.remove_reader(self._conn.fileno())
        self._conn.close()
        os.waitpid(self.pid, 0)

    def _ask(self, kind: str, payload: Any) -> asyncio.Future:
        assert self._conn is not None and self._loop is not None, "start() and attach() first"
        future = self._loop.create_future()
        if self._closed:
            future.set_exception(Failed("the funnel process has stopped"))
            return future
        tag = next(self._tags)
        self._pending[tag] = future
        self._conn.send((kind, tag, payload))
        return future

    def _read(self) -> None:
        assert self._conn is not None
        try:
            while self._conn.poll():
                tag, answer, state = self._conn.recv()
                if state is not None:
                    self.state = state
                future = self._pending.pop(tag, None)
                if future is not None and not future.done():
                    future.set_result(answer)
        except (EOFError, OSError):
            self._died()

    def _died(self) -> None:
        """The funnel process is gone: what waited fails, and this worker stops (a supervisor,
        with ``--workers``, starts another)."""
        assert self._conn is not None and self._loop is not None
        self._loop.remove_reader(self._conn.fileno())
        self._closed = True
        _, status = os.waitpid(self.pid, 0)
        log.error("the funnel process %d died (exit code %d); stopping", self.pid, os.waitstatus_to_exitcode(status))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(Failed("the funnel process died; the server log has the details"))
        self._pending.clear()
        os.kill(os.getpid(), signal.SIGTERM)


def _funnel_process(conn: Connection, live: Live, reloader: Any) -> None:
    """The funnel process's loop: a batch (or a question) in, its answer out, until the front
    closes the pipe. Signals are the front's to handle; reloads run on a thread beside."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    # The front's work is short and latency-bound (a refusal, an answer): when both want a core, it
    # goes first. Measured at 4x the saturating rate on 2 cores: 503s p99 5.8 -> %s ms.
    os.nice(NICE)
    first = live.current.folder
    sending = threading.Lock()

    def send(tag: int, answer: Any, state: EngineState | None = None) -> None:
        with sending:
            conn.send((tag, answer, state))

    def reload(tag: int) -> None:
        try:
            answer = reloader.reload()
        except Exception as e:  # never leave the front waiting
            log.exception("reload failed")
            answer = {"reloaded": False, "version": live.current.version, "error": str(e), "workers": 1}
        send(tag, answer, _state(live))

    if reloader.every is not None:
        reloader.start()
    try:
        while True:
            try:
                kind, tag, payload = conn.recv()
            except (EOFError, OSError):
                return
            if kind == "batch":
                send(tag, run_batch(live, payload), _state(live))
            elif kind == "health":
                send(tag, {**_health(live), "funnel_pid": os.getpid(), "funnel_memory_mib": memory_mib()})
            elif kind == "reload":
                threading.Thread(target=reload, args=(tag,), name="reload-now", daemon=True).start()
            elif kind == "check":
                reloader.trigger()
    finally:
        reloader.stop()
        if live.current.folder is not None and live.current.folder != first:
            shutil.rmtree(live.current.folder, ignore_errors=True)


def run_batch(live: Live, jobs: list[Any]) -> list[Any]:
    """Every recommendation of the batch through the funnel together, each similar-items lookup
    on its own; per job ``(result, version served)`` or the exception to raise."""
    served = live.current
    funnel = served.funnel
    out: list[Any] = [None] * len(jobs)
    asks = []
    for i, job in enumerate(jobs):
        if isinstance(job, Request):
            checked = _alone(lambda job=job: check_features(funnel, job.features), job)
            if isinstance(checked, Exception):
                out[i] = checked
            else:
                asks.append(i)
    if asks:
        try:
            results = funnel.recommend_many([jobs[i] for i in asks])
        except Exception:  # one request spoilt the batch: each alone, so the others are answered
            results = [_alone(lambda i=i: funnel.recommend_many([jobs[i]])[0], jobs[i]) for i in asks]
        for i, result in zip(asks, results):
            out[i] = result if isinstance(result, Exception) else (result, served.version)
    for i, job in enumerate(jobs):
        if isinstance(job, Similar):
            result = _alone(lambda job=job: funnel.similar_items(job.item_id, job.k), job, KeyError)
            out[i] = result if isinstance(result, Exception) else (result, served.version)
    return out


def _alone(call: Callable[[], Any], job: Any, *expected: type[Exception]) -> Any:
    """``call()``, or the exception the request should get: Invalid (the request's fault) or an
    ``expected`` one as it is, any other logged with its traceback as a one-line Failed."""
    try:
        return call()
    except (Invalid, *expected) as e:
        return e
    except RecfunnelError as e:
        return Invalid(str(e).splitlines()[0] if str(e) else type(e).__name__)
    except Exception as e:
        log.error("%r failed", job, exc_info=e)
        return Failed(f"internal error ({type(e).__name__}); the server log has the details")


def check_features(funnel: Any, features: dict[str, Any] | None) -> None:
    """Values of the right shape for the model's user features: one value for a single-hot or dense
    feature, a number (or null) for a dense one. Names the model lacks are the funnel's to warn of."""
    if not features:
        return
    manifest = funnel.manifest
    known = set(manifest.roles.get("user_features", []))
    dense = {f.name for f in manifest.dense}
    for name, value in features.items():
        if name not in known:
            continue
        if isinstance(value, list) and (name in dense or not manifest.feature(name).multi_hot):
            raise Invalid(f"features.{name}: expected one value ({name} is not multi-hot), got a list")
        if name in dense and value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise Invalid(f"features.{name}: expected a number ({name} is dense), got {json_type(value)}")
