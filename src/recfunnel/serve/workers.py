"""Several worker processes on one port, pre-forked from a parent that loaded the models once.

    run_workers(2, serve_one)   # forks two children, each calling serve_one() until SIGTERM

The children share the port (each on a socket of its own where SO_REUSEPORT spreads connections
over them, see :mod:`recfunnel.serve.server`) and the parent's memory copy-on-write: the weights,
the index and the catalogues stay one copy in RAM however many workers there are (a child's own
pages are mostly its Python objects' reference counts). The parent supervises: SIGTERM or SIGINT
is passed on to every child, which stops taking connections and finishes the requests it holds,
and the parent returns once all have gone (SIGKILL after ``grace`` seconds); SIGHUP is passed on
(the children reload their models); a child that dies on its own is logged and replaced, unless
children keep dying at once (then all stop and :class:`RecfunnelError` says so).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from recfunnel.errors import RecfunnelError

__all__ = ["run_workers", "children_of"]

log = logging.getLogger("recfunnel.serve")

QUICK_DEATH_S = 5.0  # a child that dies this soon after its start...
QUICK_DEATHS = 3  # ...this many times in a row: the workers cannot run; stop


def run_workers(n: int, serve_one: Callable[[], None], grace: float = 10.0) -> None:
    children: dict[int, float] = {}  # pid -> start time
    stopping: float | None = None  # when the stop was asked
    quick_deaths = 0

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:  # the child: serve, then leave without running the parent's clean-up
            code = 1
            try:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_DFL)
                serve_one()
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = time.monotonic()

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        if stopping is None:
            stopping = time.monotonic()
        _signal_all(children, signal.SIGTERM)

    def forward(signum: int, frame: Any) -> None:
        _signal_all(children, signum)

    previous = {
        sig: signal.signal(sig, handler)
        for sig, handler in ((signal.SIGTERM, stop), (signal.SIGINT, stop), (signal.SIGHUP, forward))
    }
    try:
        for _ in range(n):
            spawn()
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                if stopping is not None and time.monotonic() - stopping > grace:
                    _signal_all(children, signal.SIGKILL)
                time.sleep(0.05)
                continue
            started = children.pop(pid, None)
            if started is None or stopping is not None:
                continue
            code = os.waitstatus_to_exitcode(status)
            quick_deaths = quick_deaths + 1 if time.monotonic() - started < QUICK_DEATH_S else 0
            if quick_deaths >= QUICK_DEATHS:
                stop(signal.SIGTERM, None)
                raise RecfunnelError(
                    f"worker processes keep dying at start (the last with exit code {code}); see the log above"
                )
            log.error("worker %d exited with code %d; starting another", pid, code)
            spawn()
    finally:
        if children:  # an exception here: take the children down with us
            _signal_all(children, signal.SIGKILL)
            for pid in list(children):
                os.waitpid(pid, 0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _signal_all(children: dict[int, float], signum: int) -> None:
    for pid in list(children):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def children_of(pid: int) -> list[int]:
    """A process's child processes (Linux /proc; empty elsewhere)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    out: list[int] = []
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(p) for p in f.read().split()]
        except OSError:
            continue
    return out
