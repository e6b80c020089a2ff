"""Figures of a run, for MLflow and the report: training curves, calibration, model comparison.

Every function returns a matplotlib ``Figure`` built without pyplot: no display, no global figure
registry to leak into, no backend switched under the caller's feet. Log it with
``tracker.log_figure(fig, "training_curves")`` or save it with ``fig.savefig("curves.png")``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure

__all__ = ["training_curves", "calibration_plot", "metric_comparison"]

_NOT_METRICS = {"step", "epoch", "split", "train_loss"}


def training_curves(history: list[dict[str, Any]]) -> Figure:
    """Training loss vs step, then one panel per validation metric vs epoch.

    history: ``{"step": int, "epoch": float, "train_loss": float}`` per logged step and
    ``{"epoch": int, "split": "val", "<metric>": float, ...}`` per evaluation, in any order.
    """
    steps = sorted((h["step"], h["train_loss"]) for h in history if "train_loss" in h and "step" in h)
    evals = sorted((h for h in history if h.get("split") == "val"), key=lambda h: h["epoch"])
    metrics = sorted({k for h in evals for k, v in h.items() if k not in _NOT_METRICS and _number(v)})
    panels = 1 + len(metrics)
    cols = min(panels, 3)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(4.5 * cols, 3.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    flat = axes.ravel()
    ax = flat[0]
    if steps:
        x, y = zip(*steps)
        ax.plot(x, y, lw=1, color="tab:blue")
    else:
        ax.text(0.5, 0.5, "no training steps logged", ha="center", va="center", transform=ax.transAxes)
    ax.set(title="training loss", xlabel="step", ylabel="loss")
    for ax, name in zip(flat[1:], metrics):
        points = [(h["epoch"], h[name]) for h in evals if _number(h.get(name))]
        x, y = zip(*points)
        ax.plot(x, y, marker="o", color="tab:orange")
        ax.set(title=f"val {name}", xlabel="epoch", ylabel=name)
    for ax in flat[panels:]:
        ax.set_visible(False)
    for ax in flat[:panels]:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def calibration_plot(bins: dict[str, Any]) -> Figure:
    """Reliability diagram: mean label vs mean predicted probability per bin, with the diagonal.

    bins: ``mean_pred``, ``mean_label``, ``count`` arrays of the same length (one entry per bin;
    bins with count 0 are skipped). Marker area follows the bin's share of rows.
    """
    pred = np.asarray(bins["mean_pred"], np.float64)
    label = np.asarray(bins["mean_label"], np.float64)
    count = np.asarray(bins["count"], np.float64)
    if not len(pred) == len(label) == len(count):
        raise ValueError(
            f"calibration bins: mean_pred, mean_label, count need one length, got "
            f"{len(pred)}, {len(label)}, {len(count)}"
        )
    keep = count > 0
    fig = Figure(figsize=(4.8, 4.5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    if keep.any():
        share = count[keep] / count[keep].sum()
        ax.plot(pred[keep], label[keep], color="tab:blue", lw=1)
        ax.scatter(pred[keep], label[keep], s=20 + 400 * share, color="tab:blue", alpha=0.7, label="model")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="mean predicted probability",
        ylabel="observed positive rate",
        title="calibration",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def metric_comparison(rows: dict[str, dict[str, float]], metrics: list[str]) -> Figure:
    """Grouped bars: one group per metric, one bar per model (e.g. two-tower vs most-popular vs EASE).

    rows: model name -> metric -> value; a metric a model lacks (or NaN) leaves a gap.
    """
    models = list(rows)
    fig = Figure(figsize=(max(4.8, 0.7 * len(metrics) * max(1, len(models)) + 2), 4.2))
    ax = fig.subplots()
    width = 0.8 / max(1, len(models))
    x = np.arange(len(metrics))
    for j, model in enumerate(models):
        values = [float(rows[model].get(m, np.nan)) for m in metrics]
        bars = ax.bar(x + (j - (len(models) - 1) / 2) * width, values, width, label=model)
        ax.bar_label(bars, labels=[f"{v:.3g}" if math.isfinite(v) else "" for v in values], fontsize=7, padding=2)
    ax.set_xticks(x, metrics)
    ax.set(ylabel="value", title="model comparison")
    ax.grid(axis="y", alpha=0.3)
    if models:
        ax.legend()
    fig.tight_layout()
    return fig


def _number(value: Any) -> bool:
    return (
        isinstance(value, (int, float, np.floating, np.integer))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )
