"""``recfunnel serve``: load a funnel, then answer HTTP on one or several worker processes until
SIGINT/SIGTERM.

    serve(".demo/runs/two-tower", index="index/", ranker=".demo/runs/dlrm", port=8000)
    serve("models:/recfunnel-tt@champion", ranker="models:/recfunnel-dlrm@champion", reload_every=60)

It prints one line once loaded (what, and the URL: with ``port=0`` the port the system chose),
then serves; on SIGINT/SIGTERM it stops taking connections, lets requests in flight finish (at
most ``GRACE_S``) and returns. A worker is two processes: the HTTP loop, and the funnel forked
beside it (:mod:`recfunnel.serve.engine`). ``workers`` > 1: the models are loaded once, then that
many workers are forked to share them and the port (:mod:`recfunnel.serve.workers`). New model
versions are loaded and swapped in without a restart every ``reload_every`` seconds and on
``POST /admin/reload`` (:mod:`recfunnel.serve.reload`).

Threads: torch and faiss (one OpenMP runtime) get ``THREADS`` per worker. A batch of requests is
a few thousand rows at most, too small to split well; with OpenMP's default of a thread per core,
on a busy two-core machine, a demo request took p50 14-84 ms, p99 ~90 ms (threads waking and
spinning) instead of p50 2.2 ms, p99 2.6 ms. For more cores, run more workers.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import faiss
import torch
from threadpoolctl import threadpool_limits

from recfunnel.errors import RecfunnelError
from recfunnel.funnel.pipeline import Funnel, FunnelConfig
from recfunnel.serve.app import Batching, create_app
from recfunnel.serve.engine import ProcessEngine
from recfunnel.serve.live import Live, Served
from recfunnel.serve.protocol import OneWriteProtocol
from recfunnel.serve.reload import ModelSource
from recfunnel.serve.workers import run_workers

__all__ = ["serve", "describe", "THREADS", "GRACE_S"]

THREADS = 1
GRACE_S = 10


def serve(
    run: str | Path,
    index: str | Path | None = None,
    ranker: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    config: FunnelConfig | None = None,
    log_level: str = "warning",
    workers: int = 1,
    batching: Batching | None = None,
    reload_every: float | None = None,
) -> None:
    """Serve the funnel of a two-tower ``run`` (folder or MLflow URI), its ``index`` folder and an
    optional ``ranker`` (folder or MLflow URI) on ``host:port``, until interrupted."""
    if not isinstance(workers, int) or workers < 1:
        raise RecfunnelError(f"--workers: expected an integer >= 1, got {workers!r}")
    if reload_every is not None and not reload_every > 0:
        raise RecfunnelError(f"--reload-every: expected a number of seconds > 0, got {reload_every!r}")
    logging.basicConfig(format="recfunnel serve [%(process)d]: %(message)s", level=logging.WARNING)
    torch.set_num_threads(THREADS)
    faiss.omp_set_num_threads(THREADS)
    # and every BLAS (faiss's, numpy's): a pool's idle threads spin on the cores the front needs
    threadpool_limits(THREADS)
    source = ModelSource(run, ranker=ranker, index=index, config=config)
    first = source.load(source.versions(), first=True)
    try:
        # ~400k long-lived objects (torch, pandas, the catalogues): a full collection of them took
        # ~150 ms, a stall now and then under load. Frozen, collections skip them (and forked
        # workers do not write to their pages, which stay shared).
        gc.collect()
        gc.freeze()
        # several workers: each listens on a socket of its own on the port (SO_REUSEPORT, the kernel
        # spreads connections over them); on one shared socket the worker awake first took them
        # all (measured: one funnel at 0.9 core, the other idle). This one holds the port.
        spread = workers > 1 and hasattr(socket, "SO_REUSEPORT")
        sock = _bind(host, port, reuse_port=spread)
        bound = sock.getsockname()[1]
        url_host = f"[{host}]" if ":" in host else host
        many = f", {workers} workers" if workers > 1 else ""
        print(
            f"recfunnel serve: {first.version} ({describe(first.funnel)}{many}) on http://{url_host}:{bound}",
            flush=True,
        )
        with sock:
            one = partial(_serve_one, first, source, reload_every, workers, batching, log_level)
            if workers == 1:
                one(sock, notify=None)
            else:
                supervisor = os.getpid()
                # a reload asked of one worker over HTTP: the supervisor passes SIGHUP to them all
                notify = partial(os.kill, supervisor, signal.SIGHUP)
                run_workers(workers, partial(_worker, one, notify, sock, bound if spread else None), GRACE_S + 5)
    finally:
        if first.folder is not None:  # downloaded models (later versions: their processes remove theirs)
            shutil.rmtree(first.folder, ignore_errors=True)


def _worker(one: Callable[..., None], notify: Callable[[], None], shared: socket.socket, port: int | None) -> None:
    """A forked worker: on a socket of its own on ``port`` (SO_REUSEPORT), else on ``shared``."""
    if port is None:
        one(shared, notify=notify)
        return
    host = shared.getsockname()[0]
    shared.close()  # the supervisor holds the port
    with _bind(host, port, reuse_port=True) as sock:
        one(sock, notify=notify)


def _serve_one(
    first: Served,
    source: ModelSource,
    reload_every: float | None,
    workers: int,
    batching: Batching | None,
    log_level: str,
    sock: socket.socket,
    notify: Callable[[], None] | None,
) -> None:
    """One worker: the HTTP loop on ``sock`` and its funnel process, until SIGTERM; SIGHUP makes
    it check for new versions."""
    import uvicorn

    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN) if _main_thread() else None  # until the loop runs
    engine = ProcessEngine(Live(first), source, every=reload_every, workers=workers, on_reload=notify)
    engine.start(close_in_child=sock)
    try:
        app = create_app(engine, batching=batching)
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                http=OneWriteProtocol,
                log_level=log_level,
                timeout_graceful_shutdown=GRACE_S,
                access_log=False,
            )
        )
        with _sigterm_returns():
            server.run(sockets=[sock])
    finally:
        engine.close()
        if previous is not None:
            signal.signal(signal.SIGHUP, previous)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def describe(funnel: Funnel) -> str:
    """``1,682 items, exact index, 100 candidates``."""
    index = funnel.index.vectors
    return f"{len(index):,} items, {index.kind} index, {funnel.config.candidates} candidates"


class _Terminated(Exception):
    pass


def _terminated(signum: int, frame: Any) -> None:
    raise _Terminated


@contextmanager
def _sigterm_returns() -> Iterator[None]:
    """uvicorn shuts down gracefully on SIGTERM, then raises the signal again for its default
    action (death, skipping every ``finally``); here it ends ``serve`` normally instead, so the
    downloaded models are removed and the exit code is 0."""
    if not _main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
    except _Terminated:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A listening-ready socket on ``host:port`` (port 0: any free one), bound before uvicorn starts
    so that the printed URL is the real one; ``reuse_port``: others may bind the port too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP said explicitly: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets
    # whose proto says TCP, and proto 0 left it on: ~40 ms per answer (delayed ACKs) on loopback
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise RecfunnelError(f"--host {host} --port {port}: cannot listen there ({e.strerror})") from None
    return sock
