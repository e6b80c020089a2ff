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
import gc
import itertools
import logging
import os
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from typing import Any

from recfunnel.errors import RecfunnelError
from recfunnel.funnel.pipeline import Request
from recfunnel.serve.live import Live, Served
from recfunnel.serve.metrics import memory_mib
from recfunnel.serve.reload import Reloader
from recfunnel.serve.schema import json_type

__all__ = ["InlineEngine", "ProcessEngine", "Similar", "Invalid", "Failed", "EngineState", "run_batch"]

log = logging.getLogger("recfunnel.serve")

NICE = 5  # the funnel process's niceness above the front's
LOADING_NICE = 5  # and a loading one's above that


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


def _health(served: Served) -> dict[str, Any]:
    funnel = served.funnel
    return {"items": len(funnel.index.vectors), "ranker": funnel.ranker is not None, "index": funnel.index.vectors.kind}


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
        future.set_result(run_batch(self.live.current, jobs))
        self.state = _state(self.live)
        return future

    async def health(self) -> dict[str, Any]:
        return {**_health(self.live.current), "funnel_pid": None, "funnel_memory_mib": None, **self.live.health()}

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


@dataclass(eq=False)
class _Process:
    """A funnel process as the front sees it."""

    pid: int
    conn: Connection
    pending: dict[int, asyncio.Future] = field(default_factory=dict)
    retired: bool = False  # a newer version serves: closed once its last batch is answered


class ProcessEngine:
    """The funnel in a forked process, fed batches over a pipe, one batch there at a time. A new
    model version is loaded by a new funnel process, beside the one serving (its own GIL and its
    own core: a load on a thread of the serving process stalled batches for hundreds of ms, and
    requests at 100/s were refused); once it answers, batches go to it, and the old process ends
    after answering the batch it holds."""

    can_reload = True

    def __init__(
        self,
        live: Live,
        source: Any = None,
        every: float | None = None,
        workers: int = 1,
        on_reload: Callable[[], None] | None = None,
    ) -> None:
        """``live``: the loaded first version; ``source`` (a :class:`~recfunnel.serve.reload.
        ModelSource`) says which versions are newest, checked every ``every`` seconds, on SIGHUP and
        on ``reload()``; ``on_reload`` is called after a reload asked for over HTTP."""
        self.live, self.source, self.on_reload = live, source, on_reload
        self.reloader = (
            Reloader(live, source, every=every, workers=workers, load=self._load, on_swap=self._swapped)
            if source is not None
            else None
        )
        self.state = _state(live)
        self._tags = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._processes: list[_Process] = []
        self._closed = False

    @property
    def pid(self) -> int:
        return self._current.pid

    @property
    def _current(self) -> _Process:
        return self.live.current.funnel

    def start(self, close_in_child: Any = None) -> None:
        """Fork the first funnel process (before the event loop starts in this one)."""
        self._close_in_child = close_in_child
        process = self._fork(self.live.current, None)
        self.live.current = replace(self.live.current, funnel=process)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._listen(self._current)
        if self.reloader is not None and self.reloader.every is not None:
            self.reloader.start()

    def run(self, jobs: list[Any]) -> asyncio.Future:
        return self._ask(self._current, "batch", jobs)

    async def health(self) -> dict[str, Any]:
        return {**(await self._ask(self._current, "health", None)), **self.live.health()}

    async def reload(self) -> dict[str, Any]:
        if self.reloader is None:
            raise Failed("this engine was given no model source to reload from")
        answer = await asyncio.to_thread(self.reloader.reload)
        self.state = _state(self.live)
        if self.on_reload is not None:
            self.on_reload()
        return answer

    def trigger(self) -> None:
        """Check for new versions soon (e.g. on SIGHUP)."""
        if self.reloader is not None:
            self.reloader.trigger()

    def close(self) -> None:
        """End the funnel processes (each finishes the batch it runs) and wait for them."""
        if self._closed:
            return
        self._closed = True
        if self.reloader is not None:
            self.reloader.stop()
        for process in list(self._processes):
            self._end(process)

    # --- processes ------------------------------------------------------------------------

    def _fork(self, served: Any, versions: dict[str, str] | None) -> _Process:
        """A funnel process serving ``served`` (already loaded here), or loading ``versions``."""
        front, back = Pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                front.close()
                for other in self._processes:
                    other.conn.close()
                if self._close_in_child is not None:
                    self._close_in_child.close()  # the listening socket is the front's alone
                signal.set_wakeup_fd(-1)  # the front's loop listens on it, not this process
                _funnel_process(back, served, self.source, versions)
                code = 0
            except BaseException:
                log.exception("the funnel process failed")
            finally:
                os._exit(code)
        back.close()
        process = _Process(pid, front)
        self._processes.append(process)
        return process

    def _load(self, versions: dict[str, str]) -> Served:
        """The reloader's load (on its thread): a new funnel process loads ``versions``; what it
        serves, once it says it is ready. Raises what made it fail."""
        assert self._loop is not None
        forked = asyncio.run_coroutine_threadsafe(self._fork_soon(versions), self._loop)
        process = forked.result()
        try:
            kind, answer = process.conn.recv()
        except (EOFError, OSError):
            kind, answer = "failed", "the loading process died; the server log has the details"
        if kind != "ready":
            self._loop.call_soon_threadsafe(self._end, process)
            raise RecfunnelError(answer)
        self._loop.call_soon_threadsafe(self._listen, process)
        return Served(process, answer["version"], dict(versions), loaded_at=answer["loaded_at"])

    async def _fork_soon(self, versions: dict[str, str]) -> _Process:
        return self._fork(None, versions)  # on the loop's thread: no other thread is mid-request

    def _listen(self, process: _Process) -> None:
        assert self._loop is not None
        self._loop.add_reader(process.conn.fileno(), self._read, process)

    def _swapped(self, old: Served) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._retire, old.funnel)

    def _retire(self, process: _Process) -> None:
        process.retired = True
        if not process.pending:
            self._end(process)

    def _end(self, process: _Process) -> None:
        if process not in self._processes:
            return
        self._processes.remove(process)
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(process.conn.fileno())
        process.conn.close()  # the process sees the end of its pipe and leaves
        try:
            os.waitpid(process.pid, 0)
        except ChildProcessError:
            pass

    def _ask(self, process: _Process, kind: str, payload: Any) -> asyncio.Future:
        assert self._loop is not None, "attach() first"
        future = self._loop.create_future()
        if self._closed or process not in self._processes:
            future.set_exception(Failed("the funnel process has stopped"))
            return future
        tag = next(self._tags)
        process.pending[tag] = future
        process.conn.send((kind, tag, payload))
        return future

    def _read(self, process: _Process) -> None:
        try:
            while process.conn.poll():
                tag, answer = process.conn.recv()
                future = process.pending.pop(tag, None)
                if future is not None and not future.done():
                    future.set_result(answer)
        except (EOFError, OSError):
            self._died(process)
            return
        self.state = _state(self.live)
        if process.retired and not process.pending:
            self._end(process)

    def _died(self, process: _Process) -> None:
        """A funnel process is gone: what waited on it fails; if it was serving, this worker stops
        (a supervisor, with ``--workers``, starts another)."""
        pending, process.pending = process.pending, {}
        serving = process is self._current and not self._closed
        self._end(process)
        for future in pending.values():
            if not future.done():
                future.set_exception(Failed("the funnel process died; the server log has the details"))
        if serving:
            log.error("the funnel process %d died; stopping", process.pid)
            os.kill(os.getpid(), signal.SIGTERM)


def _funnel_process(conn: Connection, served: Any, source: Any, versions: dict[str, str] | None) -> None:
    """A funnel process's loop: a batch (or a question) in, its answer out, until the front closes
    the pipe. Given ``versions`` instead of ``served``, it loads them first and says whether it is
    ready (then serves them) or why it failed (then leaves). Signals are the front's to handle."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    # The front's work is short and latency-bound (a refusal, an answer): when both want a core, it
    # goes first. A process loading a new version yields to the one serving, too.
    os.nice(NICE)
    if hasattr(os, "SCHED_BATCH"):  # CPU-bound: it does not preempt the front when it wakes (Linux)
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    if served is None:
        os.nice(LOADING_NICE)
        try:
            served = source.load(versions)
        except Exception as e:
            log.error("loading %s failed", versions, exc_info=not isinstance(e, RecfunnelError))
            conn.send(("failed", str(e).splitlines()[0] if str(e) else type(e).__name__))
            return
        gc.freeze()  # like the first version's: collections need not walk what was loaded
        try:
            os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0) - LOADING_NICE)
        except PermissionError:  # raising priority back takes privileges: then it serves as it loaded
            pass
        conn.send(("ready", {"version": served.version, "loaded_at": served.loaded_at}))
    try:
        while True:
            try:
                kind, tag, payload = conn.recv()
            except (EOFError, OSError):
                return
            if kind == "batch":
                conn.send((tag, run_batch(served, payload)))
            elif kind == "health":
                conn.send((tag, {**_health(served), "funnel_pid": os.getpid(), "funnel_memory_mib": memory_mib()}))
    finally:
        if versions is not None and served.folder is not None:  # what this process downloaded
            shutil.rmtree(served.folder, ignore_errors=True)


def run_batch(served: Served, jobs: list[Any]) -> list[Any]:
    """Every recommendation of the batch through ``served``'s funnel together, each similar-items
    lookup on its own; per job ``(result, version served)`` or the exception to raise."""
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
