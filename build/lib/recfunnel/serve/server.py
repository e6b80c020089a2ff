"""``recfunnel serve``: load a funnel, then answer HTTP on one uvicorn process until SIGINT/SIGTERM.

    serve(".demo/runs/two-tower", index="index/", ranker=".demo/runs/dlrm", port=8000)
    serve("runs:/<run_id>/model", index="index/", ranker="models:/recfunnel-dlrm/latest")

It prints one line once loaded (what, and the URL: with ``port=0`` the port the system chose),
then uvicorn takes over; on SIGINT/SIGTERM it stops taking connections, lets requests in flight
finish (at most ``GRACE_S``) and returns.

Threads: torch and faiss (one OpenMP runtime) get ``THREADS``. A request is one user, whose
tensors are far too small to split; with OpenMP's default of a thread per core, on a busy two-core
machine, a demo request took p50 14-84 ms, p99 ~90 ms (threads waking and spinning) instead of
p50 2.2 ms, p99 2.6 ms.
"""

from __future__ import annotations

import gc
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import torch

from recfunnel.errors import RecfunnelError
from recfunnel.funnel.pipeline import Funnel, FunnelConfig
from recfunnel.serve.app import create_app
from recfunnel.serve.resolve import load_funnel

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
) -> None:
    """Serve the funnel of a two-tower ``run`` (folder or MLflow URI), its ``index`` folder and an
    optional ``ranker`` (folder or MLflow URI) on ``host:port``, until interrupted."""
    import uvicorn

    torch.set_num_threads(THREADS)
    faiss.omp_set_num_threads(THREADS)
    with tempfile.TemporaryDirectory(prefix="recfunnel-serve-") as tmp:
        funnel = load_funnel(run, index=index, ranker=ranker, config=config, into=tmp)
        app = create_app(funnel)
        # ~400k long-lived objects (torch, pandas, the catalogues): a full collection of them took
        # ~150 ms, a stall now and then under load. Frozen, collections skip them.
        gc.collect()
        gc.freeze()
        sock = _bind(host, port)
        bound = sock.getsockname()[1]
        url_host = f"[{host}]" if ":" in host else host
        print(f"recfunnel serve: {describe(funnel, run, ranker)} on http://{url_host}:{bound}", flush=True)
        server = uvicorn.Server(
            uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=GRACE_S, access_log=False)
        )
        with sock, _sigterm_returns():
            server.run(sockets=[sock])


def describe(funnel: Funnel, run: str | Path, ranker: str | Path | None) -> str:
    """``two-tower RUN (1,682 items, exact index, 100 candidates) + dlrm RANKER``."""
    index = funnel.index.vectors
    out = (
        f"{funnel.retriever.kind} {run} ({len(index):,} items, {index.kind} index, "
        f"{funnel.config.candidates} candidates)"
    )
    return out + (f" + {funnel.ranker.kind} {ranker}" if funnel.ranker is not None else "")


class _Terminated(Exception):
    pass


def _terminated(signum: int, frame: Any) -> None:
    raise _Terminated


@contextmanager
def _sigterm_returns() -> Iterator[None]:
    """uvicorn shuts down gracefully on SIGTERM, then raises the signal again for its default
    action (death, skipping every ``finally``); here it ends ``serve`` normally instead, so the
    downloaded models are removed and the exit code is 0."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
    except _Terminated:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on ``host:port`` (port 0: any free one), bound before uvicorn starts
    so that the printed URL is the real one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP said explicitly: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets
    # whose proto says TCP, and proto 0 left it on: ~40 ms per answer (delayed ACKs) on loopback
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise RecfunnelError(f"--host {host} --port {port}: cannot listen there ({e.strerror})") from None
    return sock
