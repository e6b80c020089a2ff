"""The end of a run: metrics, plots, checkpoints and the model into MLflow; a summary table for people."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from recfunnel.config import RunConfig
from recfunnel.metrics.ranking import calibration_bins
from recfunnel.report import metric_header, table
from recfunnel.train.checkpoint import latest_checkpoint

__all__ = ["log_results", "print_run_summary", "comparison_rows"]

RANKING_COLUMNS = ("auc", "log_loss", "calibration", "rmse", "mae", "accuracy")  # per head, label_ prefixed if several


def _ranking_columns(metrics: dict[str, Any]) -> list[str]:
    test = metrics.get("test") or metrics.get("val") or {}
    lists = [k for k in test if k.startswith(("ndcg_at", "recall_at"))]  # a two-stage ranker's candidate lists
    return lists + [k for k in test if k.endswith(RANKING_COLUMNS)]


def _retrieval_columns(metrics: dict[str, Any]) -> list[str]:
    """recall@K and NDCG@K for every K, then top-K accuracy at the largest K with and without the
    user's training items excluded (the latter is what TensorFlow Recommenders reports)."""
    test = metrics.get("test") or metrics.get("val") or {}
    ordered = [k for k in test if k.startswith("recall_at")] + [k for k in test if k.startswith("ndcg_at")]
    accuracy = [k for k in test if k.startswith("accuracy_at") and not k.endswith("no_exclusion")]
    if accuracy:
        top = max(accuracy, key=lambda k: int(k.rsplit("_", 1)[1]))
        ordered += [top] + [k for k in (f"{top}_no_exclusion",) if k in test]
    return ordered


def comparison_rows(metrics: dict[str, Any], split: str) -> dict[str, dict[str, float]]:
    """{model name: metrics on ``split``} for the trained model and every baseline."""
    rows = {metrics["model"]: metrics.get(split, {})}
    if "candidates" in metrics:  # the same lists in the retriever's order
        rows["retriever's order"] = {
            k.removeprefix("retrieval_"): v for k, v in rows[metrics["model"]].items() if k.startswith("retrieval_")
        }
    for name, by_split in metrics.get("baselines", {}).items():
        if split in by_split:
            rows[name.replace("_", "-")] = by_split[split]
    return rows


def print_run_summary(metrics: dict[str, Any], out: Path) -> None:
    retrieval = metrics["model"] == "two-tower"
    columns = _retrieval_columns(metrics) if retrieval else _ranking_columns(metrics)
    for split in ("val", "test"):
        rows = comparison_rows(metrics, split)
        if not rows[metrics["model"]]:
            continue
        print()
        print(
            table(
                [[name] + [m.get(c) for c in columns] for name, m in rows.items()],
                ["model"] + [metric_header(c) for c in columns],
                title=f"{split} split",
            )
        )
    if "train" not in metrics:  # evaluated afresh: no training record
        return
    t, e = metrics["train"], metrics["early_stopping"]
    kept = (
        f"best epoch {e['best_epoch']} by val {e['metric']}"
        if metrics.get("val")
        else "no validation split: the last epoch is kept"
    )
    print(
        f"\ntrained {e['epochs']} epochs ({t['steps']:,} steps, {t['seconds']:.1f} s, "
        f"{t['samples_per_s']:,.0f} samples/s); {kept}" + (", stopped early" if e["stopped_early"] else "")
    )
    print(f"run folder: {out}   MLflow run: {metrics['mlflow']['run_id']} ({metrics['mlflow']['tracking_uri']})")


def _flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for split in ("val", "test"):
        for k, v in metrics.get(split, {}).items():
            out[f"{split}_{k}"] = v
    for name, by_split in metrics.get("baselines", {}).items():
        for split, values in by_split.items():
            if isinstance(values, dict):
                for k, v in values.items():
                    if isinstance(v, (int, float)):
                        out[f"baseline_{name}_{split}_{k}"] = v
    for k, v in metrics["train"].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):  # not the per-epoch audit list
            out[f"train_{k}"] = v
    return out


def log_results(
    tracker: Any,
    metrics: dict[str, Any],
    history: list[dict[str, Any]],
    trained: Any,
    out: Path,
    objective: Any,
    config: RunConfig,
) -> None:
    from recfunnel.train import plots  # matplotlib: only when a run ends, not for `recfunnel evaluate`

    tracker.log_metrics(_flat_metrics(metrics))
    shown = set(_retrieval_columns(metrics) if config.is_retrieval else _ranking_columns(metrics)) | {"loss"}
    curves = [
        {k: v for k, v in point.items() if point.get("split") != "val" or k in shown or k in ("epoch", "split")}
        for point in history
    ]
    figures = {"training_curves": plots.training_curves(curves)}
    if config.is_retrieval:
        columns = [c for c in _retrieval_columns(metrics) if c.startswith(("recall_at", "ndcg_at"))]
        figures["comparison"] = plots.metric_comparison(comparison_rows(metrics, "test"), columns)
    elif "test" in metrics and config.model.heads[0].kind == "binary":
        logits, labels, weights = objective.predictions["test"]  # the final test pass's, all ranks gathered
        keep = weights > 0
        column = objective.criterion.columns[0]
        probs = 1 / (1 + np.exp(-logits[keep, 0]))
        figures["calibration"] = plots.calibration_plot(calibration_bins(labels[keep, column], probs))
    plot_dir = out / "plots"
    plot_dir.mkdir(exist_ok=True)
    for name, fig in figures.items():
        tmp = plot_dir / f".{name}.png.tmp"  # whole or not at all, like every file a run writes
        fig.savefig(tmp, dpi=100, format="png")
        tmp.replace(plot_dir / f"{name}.png")
        tracker.log_figure(fig, f"plots/{name}.png")
    tracker.log_artifact(out / "metrics.json")
    if config.tracking.log_checkpoints:  # the best weights and the newest resumable checkpoint
        tracker.log_artifact(out / "checkpoints" / "best.pt", "checkpoints")
        if (newest := latest_checkpoint(out / "checkpoints")) is not None:
            tracker.log_artifacts(newest, f"checkpoints/{newest.name}")
    from recfunnel.tracking.pyfunc import example_request  # mlflow.pyfunc: slow to import, needed only here

    tracker.log_model(trained.folder, register_as=config.tracking.register_as, input_example=example_request(trained))
