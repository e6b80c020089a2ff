"""Logistic regression on one-hot features: the linear baseline a deep ranker must beat."""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from recfunnel.data.format.manifest import Manifest
from recfunnel.data.format.rows import Rows
from recfunnel.errors import DataError
from recfunnel.metrics.ranking import binary_metrics, list_metrics

__all__ = ["logistic_regression", "one_hot"]

LIST_KS = (10, 20, 100)  # cut-offs of list metrics (as a ranker's default eval.ks)


def one_hot(rows: Rows, manifest: Manifest, mean: np.ndarray, std: np.ndarray) -> sp.csr_matrix:
    """Design matrix float64 (n, D + sum of cardinalities): standardized dense features, one column
    per single-hot id, and per multi-hot id a column holding 1 / (the row's list length)."""
    n = len(rows)
    cards = [f.cardinality for f in manifest.single_hot] + [f.cardinality for f in manifest.multi_hot]
    s = rows.sparse.shape[1]
    if s + rows.mh_lengths.shape[1] != len(cards) or rows.dense.shape[1] != len(manifest.dense):
        raise DataError(
            f"rows have {rows.dense.shape[1]} dense, {s} single-hot and {rows.mh_lengths.shape[1]} "
            f"multi-hot features; the manifest lists {len(manifest.dense)}, "
            f"{len(manifest.single_hot)} and {len(manifest.multi_hot)}"
        )
    blocks = [sp.csr_matrix((rows.dense.astype(np.float64) - mean) / std)]
    if s:
        offsets = np.cumsum([0] + cards[:s])[:-1]
        cols = (rows.sparse + offsets).ravel()
        blocks.append(sp.csr_matrix((np.ones(n * s), cols, np.arange(0, n * s + 1, s)), shape=(n, sum(cards[:s]))))
    for j, values in enumerate(rows.mh_values):
        lengths = rows.mh_lengths[:, j].astype(np.int64)
        weight = 1.0 / np.repeat(np.maximum(lengths, 1), lengths)
        indptr = np.r_[0, np.cumsum(lengths)]
        blocks.append(sp.csr_matrix((weight, values, indptr), shape=(n, cards[s + j])))
    return sp.hstack(blocks, format="csr")


def logistic_regression(
    train_rows: Rows,
    test_rows: Mapping[str, Rows] | Sequence[Rows] | Rows,
    manifest: Manifest,
    *,
    c: float = 0.1,
    max_iter: int = 300,
    weights: np.ndarray | None = None,
) -> dict[str, dict[str, Any]]:
    """Fit on ``train_rows`` and score each split of ``test_rows`` on the manifest's first (binary) label.

    ``test_rows``: ``{split name: Rows}``, a list (named "0", "1", ...) or one ``Rows`` (named "test").
    ``c`` is scikit-learn's inverse L2 strength (lbfgs). Returns ``{split: binary_metrics(...) plus
    "rows"}`` and a ``"fit"`` entry: ``seconds``, ``iterations``, ``converged``, ``features``.
    """
    label = manifest.labels[0]
    if label.kind != "binary":
        raise DataError(f"logistic_regression needs a binary first label; {label.name!r} is {label.kind}")
    if isinstance(test_rows, Rows):
        test_rows = {"test": test_rows}
    elif not isinstance(test_rows, Mapping):
        test_rows = {str(i): rows for i, rows in enumerate(test_rows)}
    start = time.perf_counter()
    dense = train_rows.dense.astype(np.float64)
    mean = dense.mean(axis=0) if len(dense) else np.zeros(dense.shape[1])
    std = dense.std(axis=0) if len(dense) else np.ones(dense.shape[1])
    std[std == 0] = 1.0
    x = one_hot(train_rows, manifest, mean, std)
    y = train_rows.labels[:, 0] > 0
    if y.all() or not y.any():
        raise DataError(f"logistic_regression: the train label {label.name!r} has one class only")
    model = LogisticRegression(C=c, solver="lbfgs", max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # reported as "converged" instead
        model.fit(x, y, sample_weight=weights)
    converged = int(model.n_iter_[0]) < max_iter
    out: dict[str, dict[str, Any]] = {
        "fit": {
            "seconds": time.perf_counter() - start,
            "iterations": int(model.n_iter_[0]),
            "converged": converged,
            "features": x.shape[1],
        }
    }
    lists = int(manifest.extra.get("list_rows", 0))  # a two-stage ranker's candidate lists, whole and in order
    for name, rows in test_rows.items():
        logits = model.decision_function(one_hot(rows, manifest, mean, std))
        out[name] = {**binary_metrics(rows.labels[:, 0], logits), "rows": len(rows)}
        if lists and len(rows) % lists == 0:
            out[name].update(list_metrics(logits.reshape(-1, lists), rows.labels[:, 0].reshape(-1, lists), LIST_KS))
    return out
