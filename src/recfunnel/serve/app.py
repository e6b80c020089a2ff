"""The HTTP service around a :class:`~recfunnel.funnel.pipeline.Funnel` (FastAPI).

    POST /recommend                 {"user_id": 196, "k": 10, "exclude": [50], "features": {...}}
        -> {"user_id", "items": [{"item_id", "score", "rank"}], "source", "timings_ms", "batch",
            "version", "warnings"}
    GET  /similar-items/{item_id}?k=10  -> {"item_id", "items": [...]}   (404: an unknown item)
    GET  /health                    -> {"status": "ok", "items", "ranker", "index", "version", ...}
    GET  /metrics                   -> Prometheus text: requests by route and status, latency,
                                       stages, batches, refusals, reloads
    POST /admin/reload              -> load the newest versions of the models now (loopback only)

Every error is ``{"error": "<one line>"}``: 400 malformed JSON, 413 a body over ``max_body_bytes``,
415 a body that is not JSON, 422 a field out of its range or of the wrong type (the message names
it: ``k: must be between 1 and 1000, got 5000``), 404 an unknown route or item, 405 a wrong method,
503 (with Retry-After) when the queue is too long to answer in time or the server is stopping, 500
an internal error (logged with its traceback here, never sent).

The funnel is CPU-bound (torch, faiss, numpy): requests go through it in batches of a few ms
(:mod:`recfunnel.serve.batcher`), in a process of its own under ``serve``
(:mod:`recfunnel.serve.engine`); the loop reads requests, refuses at once those that would wait
too long (before their body is even validated) and answers.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations, and the
# request model is a local of create_app.

import asyncio
import ipaddress
import json
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from recfunnel.errors import RecfunnelError
from recfunnel.funnel.pipeline import Request as FunnelRequest
from recfunnel.serve.batcher import (
    GAP_S,
    MAX_BATCH,
    MAX_QUEUE,
    MAX_QUEUE_MS,
    MAX_WAIT_MS,
    Batcher,
    Overloaded,
    Stopped,
)
from recfunnel.serve.engine import EngineState, Failed, InlineEngine, Invalid, ProcessEngine, Similar
from recfunnel.serve.live import Live, Served, warm_up
from recfunnel.serve.metrics import CONTENT_TYPE, Metrics, label, memory_mib
from recfunnel.serve.middleware import Admission, BodyLimit, RequestMetrics
from recfunnel.serve.route import RecommendRoute
from recfunnel.serve.schema import (
    DEFAULT_K,
    Health,
    RecommendResponse,
    ReloadResponse,
    SimilarResponse,
    recommend_request,
    validation_message,
)

__all__ = ["create_app", "Batching", "MAX_BODY_BYTES", "MAX_K"]

MAX_BODY_BYTES = 64 * 1024
MAX_K = 1000
ROUTES = "POST /recommend, GET /similar-items/{item_id}, GET /health, GET /metrics, POST /admin/reload"

log = logging.getLogger("recfunnel.serve")


@dataclass
class Batching:
    """How requests are batched and admitted (:mod:`recfunnel.serve.batcher`)."""

    max_batch: int = MAX_BATCH
    max_wait_ms: float = MAX_WAIT_MS
    max_queue_ms: float = MAX_QUEUE_MS
    max_queue: int = MAX_QUEUE


def create_app(
    served: Any,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_k: int = MAX_K,
    batching: Batching | None = None,
    reload: Callable[[], dict[str, Any]] | None = None,
) -> FastAPI:
    """The service of a funnel: a loaded one (or a :class:`Live` one, which ``reload`` may swap)
    run on the loop's thread, or a started :class:`ProcessEngine`. A funnel given here is warmed
    up first, so that lazily built state is built before the first request."""
    for name, value in (("max_body_bytes", max_body_bytes), ("max_k", max_k)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    if isinstance(served, (InlineEngine, ProcessEngine)):
        engine = served
    else:
        live = served if isinstance(served, Live) else Live(Served(served, version="loaded in-process"))
        warm_up(live.current.funnel)
        engine = InlineEngine(live, reload)
    batching = batching or Batching()
    metrics = Metrics()
    batcher = Batcher(
        engine.run,
        max_batch=batching.max_batch,
        max_wait_ms=batching.max_wait_ms,
        max_queue_ms=batching.max_queue_ms,
        max_queue=batching.max_queue,
        gap_s=GAP_S if isinstance(engine, InlineEngine) else 0.0,
    )
    metrics.add_source(lambda: _runtime_lines(batcher, engine.state))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        engine.attach(loop)
        if isinstance(engine, ProcessEngine) and threading.current_thread() is threading.main_thread():
            loop.add_signal_handler(signal.SIGHUP, engine.trigger)  # check for new model versions
        try:
            yield
        finally:
            batcher.stop()
            engine.close()

    app = _Service(title="recfunnel", summary="retrieve -> filter -> rank -> re-rank", lifespan=lifespan)
    app.state.engine, app.state.metrics, app.state.batcher = engine, metrics, batcher
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    _add_error_handlers(app)

    async def answer(body: Any) -> bytes:
        start = time.perf_counter()
        request = FunnelRequest(body.user_id, body.k, list(body.exclude), body.features)
        (result, version), queued = await batcher.submit(request)
        metrics.observe_funnel(result.source, result.timings)
        total = round((time.perf_counter() - start) * 1000, 3)  # in the app: queue, funnel, replies
        return _dumps(
            {
                "user_id": body.user_id,
                "items": _ranked(result.items),
                "source": result.source,
                "timings_ms": {**result.timings, "queue": round(queued * 1000, 3), "total": total},
                "batch": result.batch,
                "version": version,
                "warnings": result.warnings,
            }
        )

    RecommendRequest = recommend_request(max_k)
    app.front = RequestMetrics(
        Admission(
            RecommendRoute(
                app.inner,
                path="/recommend",
                model=RecommendRequest,
                answer=answer,
                error=_response_of,
                max_bytes=max_body_bytes,
            ),
            batcher=batcher,
            paths=frozenset({"/recommend"}),
        ),
        metrics=metrics,
        paths=frozenset({"/recommend", "/health", "/metrics"}),
    )

    @app.post("/recommend", response_model=RecommendResponse)
    async def recommend(body: RecommendRequest) -> Response:  # what RecommendRoute passes on
        return Response(await answer(body), media_type="application/json")

    @app.get("/similar-items/{item_id}", response_model=SimilarResponse)
    async def similar_items(item_id: str, k: int | None = None) -> Response:
        k = min(DEFAULT_K, max_k) if k is None else k
        if not 1 <= k <= max_k:
            raise RequestValidationError(
                [{"type": "value_error", "loc": ("query", "k"), "msg": f"must be between 1 and {max_k}, got {k}"}]
            )
        for key in _id_candidates(item_id):
            try:
                (items, _), _ = await batcher.submit(Similar(key, k))
                return Response(_dumps({"item_id": key, "items": _ranked(items)}), media_type="application/json")
            except KeyError:
                continue
        raise HTTPException(404, f"item_id {_short(item_id)}: not in the catalogue")

    @app.get("/health", response_model=Health)
    async def health() -> dict[str, Any]:
        return {
            "status": "draining" if batcher.stopping else "ok",
            **(await engine.health()),
            "pid": os.getpid(),
            "memory_mib": memory_mib(),
        }

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/admin/reload", response_model=ReloadResponse)
    async def admin_reload(request: Request) -> dict[str, Any]:
        host = request.client.host if request.client else ""
        if not _is_loopback(host):
            raise HTTPException(403, f"POST /admin/reload: only from this machine (loopback), not from {host}")
        if not engine.can_reload:
            raise HTTPException(409, "POST /admin/reload: this app was not given a way to reload its models")
        return await engine.reload()

    return app


class _Service(FastAPI):
    """FastAPI with the admission and the request count in front of it: under a flood, a refusal
    must cost far less than an answer, and FastAPI's own layers (error handling, telemetry, body
    limit) made one cost twice what it does here."""

    front: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.front(scope, receive, send)

    async def inner(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)


def _dumps(content: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(content)
    except orjson.JSONEncodeError:  # an integer id beyond 64 bits, echoed back: the slow encoder takes it
        return json.dumps(content, separators=(",", ":")).encode()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _short(text: str) -> str:
    return repr(text) if len(text) <= 40 else f"{text[:20]!r}... ({len(text):,} characters)"


def _runtime_lines(batcher: Batcher, state: EngineState) -> list[str]:
    stats = batcher.stats
    lines = [
        "# HELP recfunnel_batches_total Funnel batches run.",
        "# TYPE recfunnel_batches_total counter",
        f"recfunnel_batches_total {stats.batches}",
        "# HELP recfunnel_batched_requests_total Requests answered through the funnel in batches.",
        "# TYPE recfunnel_batched_requests_total counter",
        f"recfunnel_batched_requests_total {stats.requests}",
        "# HELP recfunnel_refused_total Requests refused with 503: on arrival (the queue holds too "
        "much work), draining (the server is stopping).",
        "# TYPE recfunnel_refused_total counter",
        f'recfunnel_refused_total{{reason="arrival"}} {stats.refused_on_arrival}',
        f'recfunnel_refused_total{{reason="draining"}} {stats.refused_stopping}',
        "# HELP recfunnel_queue_length Requests waiting for the funnel now.",
        "# TYPE recfunnel_queue_length gauge",
        f"recfunnel_queue_length {batcher.queued}",
        "# HELP recfunnel_reloads_total Model versions swapped in (ok) or refused.",
        "# TYPE recfunnel_reloads_total counter",
        f'recfunnel_reloads_total{{result="ok"}} {state.reloads}',
        f'recfunnel_reloads_total{{result="refused"}} {state.refused}',
        "# HELP recfunnel_model_info The models served now.",
        "# TYPE recfunnel_model_info gauge",
        f'recfunnel_model_info{{version="{label(state.version)}"}} 1',
    ]
    return lines


def _ranked(items: list[tuple[Any, float]]) -> list[dict[str, Any]]:
    return [{"item_id": item, "score": score, "rank": rank} for rank, (item, score) in enumerate(items, 1)]


def _id_candidates(text: str) -> list[int | str]:
    """A path's item id as the catalogue may hold it: the text, then the integer it spells."""
    out: list[int | str] = [text]
    if text.lstrip("-").isdigit() and len(text) <= 20:  # longer cannot be an int64 id
        out.append(int(text))
    return out


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        bad_json = next((e for e in errors if e.get("type") == "json_invalid"), None)
        if bad_json is not None:
            reason = (bad_json.get("ctx") or {}).get("error", "JSON decode error")
            position = bad_json["loc"][-1] if len(bad_json.get("loc", ())) > 1 else "?"
            return _error(400, f"body is not valid JSON: {reason} at character {position}")
        return _error(422, validation_message(errors))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        where = f"{request.method} {request.url.path}"
        if exc.status_code == 404 and exc.detail == "Not Found":
            return _error(404, f"no route {where}; the service has {ROUTES}")
        if exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            return _error(405, f"{where}: method not allowed; use {allowed}", exc.headers)
        return _error(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(Invalid)
    @app.exception_handler(Overloaded)
    @app.exception_handler(Stopped)
    @app.exception_handler(Failed)
    @app.exception_handler(RecfunnelError)
    @app.exception_handler(Exception)
    async def funnel_or_internal(request: Request, exc: Exception) -> JSONResponse:
        return _response_of(exc, f"{request.method} {request.url.path}")


def _response_of(exc: Exception, where: str = "POST /recommend") -> JSONResponse:
    """The answer to an exception out of the funnel or its batcher (in FastAPI or RecommendRoute);
    any other is a 500, logged with its traceback (``where``: the request's method and path)."""
    if isinstance(exc, Invalid):
        return _error(422, str(exc))
    if isinstance(exc, Overloaded):
        return _error(503, str(exc), {"Retry-After": str(int(exc.retry_after + 0.999))})
    if isinstance(exc, Stopped):
        return _error(503, "the server is shutting down; retry on another", {"Retry-After": "1", "Connection": "close"})
    if isinstance(exc, Failed):
        return _error(500, str(exc))
    if isinstance(exc, RecfunnelError):
        return _error(422, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    log.error("%s failed", where, exc_info=exc)
    return _error(500, f"internal error ({type(exc).__name__}); the server log has the details")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)
