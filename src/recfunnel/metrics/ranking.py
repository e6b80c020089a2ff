"""Pointwise metrics of a ranker: AUC, log loss, calibration, regression and multiclass figures.

Every function takes 1-D numpy arrays or torch tensors (any device, detached here) of one length
``n`` and returns plain Python floats, so results go straight into MLflow or JSON. ``weights``
(n,) are per-row weights; None means all 1. A positive is a label > 0.

This module imports no torch: the data-preparation path (``recfunnel prepare``) uses ``auc`` and
``log_loss`` and stays light.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "auc",
    "log_loss",
    "calibration",
    "calibration_bins",
    "rmse",
    "mae",
    "accuracy",
    "binary_metrics",
    "regression_metrics",
    "sigmoid",
    "list_metrics",
]

EPS = 1e-15  # probabilities are clipped to [EPS, 1 - EPS] before taking logs


def _array(x: Any, name: str, ndim: int = 1) -> np.ndarray:
    """``x`` (numpy, torch or a sequence) as a numpy array of ``ndim`` dimensions."""
    if hasattr(x, "detach"):  # a torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimension(s), got shape {x.shape}")
    return x


def _inputs(labels: Any, values: Any, weights: Any, values_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels float64 (n,), values float64 (n,), weights float64 (n,)), checked for equal lengths."""
    y = _array(labels, "labels").astype(np.float64)
    v = _array(values, values_name).astype(np.float64)
    w = np.ones(len(y)) if weights is None else _array(weights, "weights").astype(np.float64)
    if not len(y) == len(v) == len(w):
        raise ValueError(f"lengths differ: labels {len(y)}, {values_name} {len(v)}, weights {len(w)}")
    return y, v, w


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Logistic function of float64 ``logits`` without overflow (no warning for |z| > 709)."""
    z = np.asarray(logits, np.float64)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def auc(labels: Any, scores: Any, weights: Any = None) -> float:
    """ROC AUC of ``scores`` (n,) for binary ``labels`` (n,), exact in O(n log n).

    The weighted Mann-Whitney statistic: the weighted share of (positive, negative) pairs the
    scores order correctly, a tied pair counting one half (what ``roc_auc_score`` gives).
    NaN when one class has no weight.
    """
    y, s, w = _inputs(labels, scores, weights, "scores")
    pos = y > 0
    w_pos, w_neg = float(w[pos].sum()), float(w[~pos].sum())
    if w_pos == 0 or w_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="stable")
    s, pos, w = s[order], pos[order], w[order]
    # One group per distinct score: its positive and negative weight.
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    group_pos = np.add.reduceat(np.where(pos, w, 0.0), starts)
    group_neg = np.add.reduceat(np.where(pos, 0.0, w), starts)
    neg_below = np.cumsum(group_neg) - group_neg
    return float((group_pos * (neg_below + 0.5 * group_neg)).sum() / (w_pos * w_neg))


def log_loss(labels: Any, probs: Any, weights: Any = None) -> float:
    """Weighted mean binary cross-entropy (nats) of probabilities ``probs`` (n,), clipped to
    [1e-15, 1 - 1e-15], for ``labels`` (n,)."""
    y, p, w = _inputs(labels, probs, weights, "probs")
    p = np.clip(p, EPS, 1 - EPS)
    return float(np.average(-np.where(y > 0, np.log(p), np.log1p(-p)), weights=w))


def calibration(labels: Any, probs: Any, weights: Any = None) -> float:
    """Mean predicted probability / mean observed label (1.0 is calibrated on average). NaN without positives."""
    y, p, w = _inputs(labels, probs, weights, "probs")
    observed = float(np.average(y > 0, weights=w))
    return float(np.average(p, weights=w)) / observed if observed > 0 else float("nan")


def calibration_bins(labels: Any, probs: Any, bins: int = 10) -> dict[str, np.ndarray]:
    """A reliability plot's points: ``bins`` equal-width bins of [0, 1] by predicted probability.

    Returns ``{"mean_pred", "mean_label", "count"}``, arrays (m,) for the m <= ``bins`` non-empty
    bins, in increasing order of probability.
    """
    if bins < 1:
        raise ValueError(f"bins: {bins}, expected >= 1")
    y, p, _ = _inputs(labels, probs, None, "probs")
    which = np.clip((p * bins).astype(np.int64), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    keep = count > 0
    sum_pred = np.bincount(which, weights=p, minlength=bins)
    sum_label = np.bincount(which, weights=(y > 0).astype(np.float64), minlength=bins)
    return {
        "mean_pred": sum_pred[keep] / count[keep],
        "mean_label": sum_label[keep] / count[keep],
        "count": count[keep],
    }


def rmse(labels: Any, preds: Any, weights: Any = None) -> float:
    """Weighted root mean squared error, in the labels' unit."""
    y, p, w = _inputs(labels, preds, weights, "preds")
    return float(np.sqrt(np.average((p - y) ** 2, weights=w)))


def mae(labels: Any, preds: Any, weights: Any = None) -> float:
    """Weighted mean absolute error, in the labels' unit."""
    y, p, w = _inputs(labels, preds, weights, "preds")
    return float(np.average(np.abs(p - y), weights=w))


def accuracy(labels: Any, logits: Any) -> float:
    """Share of rows whose arg-max class of ``logits`` (n, classes) is ``labels`` int (n,)."""
    y = _array(labels, "labels")
    z = _array(logits, "logits", ndim=2)
    if len(y) != len(z):
        raise ValueError(f"lengths differ: labels {len(y)}, logits {len(z)}")
    return float(np.mean(z.argmax(axis=1) == y.astype(np.int64)))


def binary_metrics(labels: Any, logits: Any, weights: Any = None) -> dict[str, float]:
    """``{"auc", "log_loss", "calibration", "positive_rate"}`` of ``logits`` (n,) for binary ``labels`` (n,).

    Log loss is computed from the logits (``softplus(z) - y z``), exact even where a sigmoid would
    round to 0 or 1.
    """
    y, z, w = _inputs(labels, logits, weights, "logits")
    pos = y > 0
    # softplus(z) - y*z = log(1 + exp(-|z|)) + max(z, 0) - y*z
    nll = np.log1p(np.exp(-np.abs(z))) + np.maximum(z, 0.0) - np.where(pos, z, 0.0)
    return {
        "auc": auc(pos, z, w),
        "log_loss": float(np.average(nll, weights=w)),
        "calibration": calibration(pos, sigmoid(z), w),
        "positive_rate": float(np.average(pos, weights=w)),
    }


def regression_metrics(labels: Any, preds: Any, weights: Any = None) -> dict[str, float]:
    """``{"rmse", "mae"}`` of ``preds`` (n,) for ``labels`` (n,)."""
    return {"rmse": rmse(labels, preds, weights), "mae": mae(labels, preds, weights)}


def list_metrics(scores: np.ndarray, labels: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    """NDCG@k and recall@k of candidate lists re-ordered by ``scores``, over the lists holding a
    positive: ``scores``, ``labels`` (lists, n), a positive is a label > 0; a list's ideal DCG
    counts its own positives. Ties keep the list's order (the retriever's)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels) > 0
    keep = labels.any(axis=1)
    scores, labels = scores[keep], labels[keep]
    if not len(labels):
        return {}
    order = np.argsort(-scores, axis=1, kind="stable")
    ranked = np.take_along_axis(labels, order, axis=1)
    positives = labels.sum(axis=1)
    gains = 1.0 / np.log2(np.arange(labels.shape[1]) + 2.0)
    out = {}
    for k in ks:
        k = min(k, labels.shape[1])
        dcg = (ranked[:, :k] * gains[:k]).sum(axis=1)
        ideal = np.cumsum(gains[:k])[np.minimum(positives, k) - 1]
        out[f"ndcg_at_{k}"] = float((dcg / ideal).mean())
        out[f"recall_at_{k}"] = float((ranked[:, :k].sum(axis=1) / positives).mean())
    return out
