"""Build a :class:`VectorIndex` and say how good it is: recall@k of approximate search vs exact.

    index, report = build_index(item_ids, item_vectors, kind="ivf", metric="cosine")
    report.recall  # e.g. 0.98: share of the exact top-100 the index finds, on 1000 sample queries

Exact top-k comes from faiss's brute-force ``knn`` over the vectors (no second index is built).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import faiss
import numpy as np

from recfunnel.errors import DataError
from recfunnel.retrieval.index import VectorIndex, as_ids, check_vectors, normalise

__all__ = ["BuildReport", "build_index", "exact_search", "recall_against_exact", "recall"]


@dataclass
class BuildReport:
    """What building an index cost and how well its search agrees with exact search."""

    kind: str
    metric: str
    count: int  # items indexed
    dim: int
    build_seconds: float  # creating, training (ivf) and adding; recall not included
    recall: float | None  # recall@recall_k vs exact on recall_queries queries; None (and 0 queries) for exact
    recall_k: int
    recall_queries: int
    params: dict[str, Any] = field(default_factory=dict)  # as resolved (e.g. the nlist ivf chose)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_index(
    ids: Any,
    vectors: Any,
    kind: str = "exact",
    metric: str = "dot",
    *,
    queries: Any = None,
    recall_k: int = 100,
    recall_sample: int = 1000,
    seed: int = 0,
    **params: int | None,
) -> tuple[VectorIndex, BuildReport]:
    """An index of ``vectors`` float32 (n, dim) under raw ``ids`` (n,), and its build report.

    Recall (approximate kinds only) is measured on ``recall_sample`` of ``queries`` if given, else of
    the item vectors, drawn at random (``seed``): in a two-tower model users and items share one space,
    so items are a fair stand-in for user queries when none are at hand.
    """
    ids = as_ids(ids)
    vectors = check_vectors(vectors, None, "vectors", ids)
    start = time.perf_counter()
    index = VectorIndex(dim=vectors.shape[1], kind=kind, metric=metric, **params)
    index.add(ids, vectors)
    seconds = time.perf_counter() - start
    found, asked = None, 0
    if kind != "exact":
        pool = vectors if queries is None else check_vectors(queries, vectors.shape[1], "queries")
        rows = np.random.default_rng(seed).choice(len(pool), min(recall_sample, len(pool)), replace=False)
        queries = pool[np.sort(rows)]
        found, asked = recall_against_exact(index, (ids, vectors), queries, recall_k), len(queries)
    return index, BuildReport(
        kind=kind,
        metric=metric,
        count=len(index),
        dim=index.dim,
        build_seconds=round(seconds, 3),
        recall=found,
        recall_k=recall_k,
        recall_queries=asked,
        params=dict(index.params),
    )


def exact_search(ids: Any, vectors: Any, queries: Any, k: int, metric: str = "dot") -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-``k`` with the same output as :meth:`VectorIndex.search` (no index kept)."""
    ids = as_ids(ids)
    vectors = check_vectors(vectors, None, "vectors", ids)
    queries = check_vectors(queries, vectors.shape[1], "queries")
    if metric == "cosine":
        vectors, queries = normalise(vectors), normalise(queries)
    fetch = min(k, len(vectors))
    scores = np.full((len(queries), k), -np.inf, np.float32)
    rows = np.full((len(queries), k), -1, np.int64)
    if fetch:
        scores[:, :fetch], rows[:, :fetch] = faiss.knn(queries, vectors, fetch, metric=faiss.METRIC_INNER_PRODUCT)
    found = ids[np.maximum(rows, 0)] if len(ids) else rows
    found[rows < 0] = -1 if found.dtype == np.int64 else None
    return scores, found


def recall(found: tuple[np.ndarray, np.ndarray], truth: tuple[np.ndarray, np.ndarray]) -> float:
    """Mean over queries of |found top-k ∩ true top-k| / |true top-k|; each is (scores, ids) (Q, k),
    empty slots (score -inf) left out. Queries with no true item are skipped."""
    per_query = []
    for f_scores, f_ids, t_scores, t_ids in zip(*found, *truth):
        true = set(t_ids[~np.isneginf(t_scores)].tolist())
        if true:
            per_query.append(len(true & set(f_ids[~np.isneginf(f_scores)].tolist())) / len(true))
    return float(np.mean(per_query)) if per_query else 1.0


def recall_against_exact(index: VectorIndex, exact: VectorIndex | tuple[Any, Any], queries: Any, k: int) -> float:
    """recall@``k`` of ``index`` vs exact search, given as an exact :class:`VectorIndex` or as the
    ``(ids, vectors)`` the index holds (searched brute-force with the index's metric)."""
    if isinstance(exact, VectorIndex):
        if exact.kind != "exact" or exact.metric != index.metric:
            raise DataError(f"exact: expected an exact {index.metric} index, got a {exact.kind} {exact.metric} one")
        truth = exact.search(queries, k)
    else:
        truth = exact_search(*exact, queries, k, metric=index.metric)
    return recall(index.search(queries, k), truth)
