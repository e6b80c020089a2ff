"""The HTTP service around a :class:`~recfunnel.funnel.pipeline.Funnel` (FastAPI).

    POST /recommend                 {"user_id": 196, "k": 10, "exclude": [50], "features": {...}}
        -> {"user_id", "items": [{"item_id", "score", "rank"}], "source", "timings_ms", "warnings"}
    GET  /similar-items/{item_id}?k=10  -> {"item_id", "items": [...]}   (404: an unknown item)
    GET  /health                    -> {"status": "ok", "items": N, "ranker": bool, "index": kind}
    GET  /metrics                   -> Prometheus text: requests by route and status, latency, stages

Every error is ``{"error": "<one line>"}``: 400 malformed JSON, 413 a body over ``max_body_bytes``,
415 a body that is not JSON, 422 a field out of its range or of the wrong type (the message names
it: ``k: must be between 1 and 1000, got 5000``), 404 an unknown route or item, 405 a wrong method,
500 an internal error (logged with its traceback here, never sent).

The funnel is CPU-bound (torch, faiss, numpy): it runs on a pool of ``workers`` threads (one by
default), off the event loop, so that the loop keeps accepting and answering (/health stays quick
under load) while requests wait their turn (``timings_ms.queue``).
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations, and the
# request model is a local of create_app.

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import faiss
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException

from recfunnel.errors import RecfunnelError
from recfunnel.funnel.pipeline import Funnel
from recfunnel.serve.metrics import CONTENT_TYPE, Metrics
from recfunnel.serve.middleware import BodyLimit, RequestMetrics
from recfunnel.serve.schema import (
    DEFAULT_K,
    Health,
    RecommendResponse,
    SimilarResponse,
    json_type,
    recommend_request,
    validation_message,
)

__all__ = ["create_app", "MAX_BODY_BYTES", "MAX_K", "WORKERS"]

MAX_BODY_BYTES = 64 * 1024
MAX_K = 1000
# Funnel threads. One: the funnel holds the GIL for most of its ~2 ms and torch hands it back and
# forth on every small op, so two threads convoy. Measured on 2 idle cores, 300 req/s offered:
# 1 thread kept up or nearly (254-300 req/s; ~2 ms a call), 2 threads did not (230-257 req/s; 6 ms).
WORKERS = 1
ROUTES = "POST /recommend, GET /similar-items/{item_id}, GET /health, GET /metrics"

log = logging.getLogger("recfunnel.serve")


class _Invalid(Exception):
    """A request the funnel cannot take, found by the app: 422 with this message."""


class _Failed(Exception):
    """The funnel failed on a request (logged where it happened): 500 with this message."""


def create_app(
    funnel: Funnel, *, max_body_bytes: int = MAX_BODY_BYTES, max_k: int = MAX_K, workers: int = WORKERS
) -> FastAPI:
    """The service of one loaded funnel. Its request path is warmed up here (one request of each
    kind), so that lazily built state is not first built by two threads at once."""
    for name, value in (("max_body_bytes", max_body_bytes), ("max_k", max_k), ("workers", workers)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    _warm_up(funnel)
    metrics = Metrics()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="funnel", initializer=_worker_threads)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        pool.shutdown(wait=True, cancel_futures=True)

    app = FastAPI(title="recfunnel", summary="retrieve -> filter -> rank -> re-rank", lifespan=lifespan)
    app.state.funnel, app.state.metrics = funnel, metrics
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics, paths=frozenset({"/recommend", "/health", "/metrics"}))
    _add_error_handlers(app)
    RecommendRequest = recommend_request(max_k)

    @app.post("/recommend", response_model=RecommendResponse)
    async def recommend(body: RecommendRequest) -> dict[str, Any]:
        if body.features:
            _check_features(funnel, body.features)
        args = (body.user_id, body.k, list(body.exclude), body.features)
        result, timings = await _in_pool(pool, funnel.recommend, *args)
        metrics.observe_funnel(result.source, result.timings)
        return {
            "user_id": body.user_id,
            "items": _ranked(result.items),
            "source": result.source,
            "timings_ms": {**result.timings, **timings},
            "warnings": result.warnings,
        }

    @app.get("/similar-items/{item_id}", response_model=SimilarResponse)
    async def similar_items(item_id: str, k: int | None = None) -> dict[str, Any]:
        k = min(DEFAULT_K, max_k) if k is None else k
        if not 1 <= k <= max_k:
            raise RequestValidationError(
                [{"type": "value_error", "loc": ("query", "k"), "msg": f"must be between 1 and {max_k}, got {k}"}]
            )
        for key in _id_candidates(item_id):
            try:
                items, _ = await _in_pool(pool, funnel.similar_items, key, k, expected=(KeyError,))
                return {"item_id": key, "items": _ranked(items)}
            except KeyError:
                continue
        raise HTTPException(404, f"item_id {item_id!r}: not in the catalogue")

    @app.get("/health", response_model=Health)
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "items": len(funnel.index.vectors),
            "ranker": funnel.ranker is not None,
            "index": funnel.index.vectors.kind,
        }

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE)

    return app


async def _in_pool(
    pool: ThreadPoolExecutor, fn: Any, *args: Any, expected: tuple[type[Exception], ...] = ()
) -> tuple[Any, dict[str, float]]:
    """``fn(*args)`` on a worker thread; (its result, {"queue": ms waiting for a worker, "total":
    ms it ran}). A RecfunnelError (the request's fault: 422) and ``expected`` exceptions pass
    through; any other is logged with its traceback and becomes a one-line 500."""
    submitted = time.perf_counter()

    def timed() -> tuple[Any, float, float]:
        start = time.perf_counter()
        return fn(*args), start, time.perf_counter()

    try:
        result, start, end = await asyncio.get_running_loop().run_in_executor(pool, timed)
    except (RecfunnelError, *expected):
        raise
    except Exception as e:
        log.error("%s%r failed", getattr(fn, "__name__", "funnel"), args, exc_info=e)
        raise _Failed(f"internal error ({type(e).__name__}); the server log has the details") from None
    return result, {"queue": round((start - submitted) * 1000, 3), "total": round((end - start) * 1000, 3)}


def _ranked(items: list[tuple[Any, float]]) -> list[dict[str, Any]]:
    return [{"item_id": item, "score": score, "rank": rank} for rank, (item, score) in enumerate(items, 1)]


def _id_candidates(text: str) -> list[int | str]:
    """A path's item id as the catalogue may hold it: the text, then the integer it spells."""
    out: list[int | str] = [text]
    if text.lstrip("-").isdigit():
        out.append(int(text))
    return out


def _check_features(funnel: Funnel, features: dict[str, Any]) -> None:
    """Values of the right shape for the model's user features: one value for a single-hot or dense
    feature, a number (or null) for a dense one. Names the model lacks are the funnel's to warn of."""
    manifest = funnel.manifest
    known = set(manifest.roles.get("user_features", []))
    dense = {f.name for f in manifest.dense}
    for name, value in features.items():
        if name not in known:
            continue
        if isinstance(value, list) and (name in dense or not manifest.feature(name).multi_hot):
            raise _Invalid(f"features.{name}: expected one value ({name} is not multi-hot), got a list")
        if name in dense and value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise _Invalid(f"features.{name}: expected a number ({name} is dense), got {json_type(value)}")


def _warm_up(funnel: Funnel) -> None:
    funnel.recommend(user_id=None, k=1)
    if len(funnel.users.raw_ids):
        funnel.recommend(user_id=_plain(funnel.users.raw_ids[0]), k=1)
    if len(funnel.items.raw_ids):
        funnel.similar_items(_plain(funnel.items.raw_ids[0]), k=1)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value  # numpy scalar -> int / str


def _worker_threads() -> None:
    # OpenMP's thread count is per calling thread: keep faiss's in step with torch's in each worker
    # (the server sets torch's; two spinning pools on two cores cost tens of ms per request).
    faiss.omp_set_num_threads(torch.get_num_threads())


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

    @app.exception_handler(_Invalid)
    async def invalid_value(request: Request, exc: _Invalid) -> JSONResponse:
        return _error(422, str(exc))

    @app.exception_handler(_Failed)
    async def failed(request: Request, exc: _Failed) -> JSONResponse:
        return _error(500, str(exc))

    @app.exception_handler(RecfunnelError)
    async def refused(request: Request, exc: RecfunnelError) -> JSONResponse:
        return _error(422, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        where = f"{request.method} {request.url.path}"
        if exc.status_code == 404 and exc.detail == "Not Found":
            return _error(404, f"no route {where}; the service has {ROUTES}")
        if exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            return _error(405, f"{where}: method not allowed; use {allowed}", exc.headers)
        return _error(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, f"internal error ({type(exc).__name__}); the server log has the details")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)
