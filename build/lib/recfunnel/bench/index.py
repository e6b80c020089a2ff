"""Vector index build time, queries/s and recall@k vs exact, on synthetic clustered vectors.

Items and queries are draws from one Gaussian mixture (``clusters`` centres ~ N(0, 1), spread
``spread`` around them), so that IVF's lists and HNSW's graph have structure to find, as they do
with trained embeddings; uniform noise would make every approximate index look bad. Exact top-k
for recall comes from faiss's brute-force ``knn``, computed once. Each index is built, searched
once to warm up, then timed over the whole query batch ``repeats`` times; the median is reported.
faiss uses its default thread count (every core unless ``OMP_NUM_THREADS`` says otherwise).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import faiss
import numpy as np

from recfunnel.report import table
from recfunnel.retrieval.index import VectorIndex
from recfunnel.retrieval.index_build import exact_search, recall

__all__ = ["bench_index", "print_index", "clustered_vectors", "DEFAULT_PARAMS", "DEFAULT_SWEEP"]

# HNSW at 1M x 64 on 2 cores: m 16 / ef_construction 40 keeps the build to a few minutes.
DEFAULT_PARAMS: dict[str, dict[str, int]] = {"exact": {}, "ivf": {}, "hnsw": {"m": 16, "ef_construction": 40}}
# Search-time settings tried on each built index, one row each: the speed/recall trade-off.
DEFAULT_SWEEP: dict[str, dict[str, tuple[int, ...]]] = {
    "ivf": {"nprobe": (32, 128, 256)},
    "hnsw": {"ef_search": (128, 256, 512)},
}


def clustered_vectors(
    n: int, dim: int, *, clusters: int = 1000, spread: float = 1.0, seed: int = 0, stream: int = 0
) -> np.ndarray:
    """float32 (n, dim) draws from a mixture of ``clusters`` Gaussians: centres fixed by ``seed``,
    draws by (``seed``, ``stream``), so items and queries share centres but not points."""
    centres = np.random.default_rng(seed).standard_normal((clusters, dim), dtype=np.float32)
    rng = np.random.default_rng([seed, stream])
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 1 << 18):  # in chunks: no float64 temporaries of the whole array
        stop = min(n, start + (1 << 18))
        out[start:stop] = centres[rng.integers(0, clusters, stop - start)]
        out[start:stop] += spread * rng.standard_normal((stop - start, dim), dtype=np.float32)
    return out


def bench_index(
    n: int = 1_000_000,
    dim: int = 64,
    queries: int = 1000,
    k: int = 100,
    kinds: tuple[str, ...] = ("exact", "ivf", "hnsw"),
    seed: int = 0,
    *,
    metric: str = "dot",
    params: dict[str, dict[str, int]] | None = None,
    sweep: dict[str, dict[str, tuple[int, ...]]] | None = None,
    repeats: int = 3,
) -> list[dict[str, Any]]:
    """Rows of kind x search setting: ``build_s`` (seconds: create, train, add; the same for every
    setting of one kind), ``queries_per_s`` (median of ``repeats`` passes over the batch),
    ``recall_at_k`` vs exact, and the resolved ``params``. ``params`` / ``sweep`` override
    DEFAULT_PARAMS / DEFAULT_SWEEP per kind (a sweep of {} = the index's own search setting)."""
    for name, value, least in (
        ("n", n, 1),
        ("dim", dim, 1),
        ("queries", queries, 1),
        ("k", k, 1),
        ("repeats", repeats, 1),
    ):
        if value < least:
            raise ValueError(f"{name}: expected an integer >= {least}, got {value!r}")
    sweep = {**DEFAULT_SWEEP, **(sweep or {})}
    items = clustered_vectors(n, dim, seed=seed)
    ids = np.arange(n, dtype=np.int64)
    query_vectors = clustered_vectors(queries, dim, seed=seed, stream=1)
    truth = exact_search(ids, items, query_vectors, k, metric)
    rows = []
    for kind in kinds:
        options = {**DEFAULT_PARAMS.get(kind, {}), **(params or {}).get(kind, {})}
        start = time.perf_counter()
        index = VectorIndex(dim=dim, kind=kind, metric=metric, **options)
        index.add(ids, items)
        build = time.perf_counter() - start
        for setting in _settings(sweep.get(kind, {})):
            index.set_search_params(**setting)
            found = index.search(query_vectors, k)  # also the warm-up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                index.search(query_vectors, k)
                times.append(time.perf_counter() - start)
            rows.append(
                {
                    "kind": kind,
                    "metric": metric,
                    "n": n,
                    "dim": dim,
                    "queries": queries,
                    "k": k,
                    "params": dict(index.params),
                    "build_s": round(build, 2),
                    "queries_per_s": round(queries / statistics.median(times)),
                    "recall_at_k": round(recall(found, truth), 4),
                    "threads": faiss.omp_get_max_threads(),
                    "search_s": [round(t, 4) for t in times],
                }
            )
        del index
    return rows


def _settings(sweep: dict[str, tuple[int, ...]]) -> list[dict[str, int]]:
    """{"nprobe": (8, 16)} -> [{"nprobe": 8}, {"nprobe": 16}]; {} -> [{}] (one option at a time)."""
    return [{name: value} for name, values in sweep.items() for value in values] or [{}]


def print_index(result: dict[str, Any]) -> None:
    rows = [
        [
            r["kind"],
            ", ".join(f"{k} {v}" for k, v in r["params"].items() if v is not None),
            r["build_s"],
            r["queries_per_s"],
            r["recall_at_k"],
        ]
        for r in result["rows"]
    ]
    first = result["rows"][0] if result["rows"] else {"n": 0, "dim": 0, "queries": 0, "k": 0, "threads": 0}
    print(
        table(
            rows,
            ["index", "params", "build s", "queries/s", f"recall@{first['k']} vs exact"],
            title=f"{first['n']:,} x {first['dim']} vectors (clustered), {first['queries']:,} queries, "
            f"{first['threads']} threads, median of the timed passes",
        )
    )
