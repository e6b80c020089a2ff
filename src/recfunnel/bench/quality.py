"""Model quality on the issue's protocols, each beside the baselines of the same run.

- ``tfrs``: MovieLens 100k, random 80/20 split of all ratings, every rating a positive (the
  TensorFlow Recommenders tutorial's protocol): two-tower top-100 accuracy with the user's
  training items excluded, and without exclusion, beside most-popular and EASE.
- ``temporal``: MovieLens 100k, each user's last ratings held out: recall@20 and NDCG@20 of the
  two-tower beside most-popular and EASE.
- ``ctr``: synthetic Criteo-shaped data with a known Bayes-optimal AUC: DLRM and DCNv2 test AUC
  beside it and beside logistic regression.

Every model trains with its default configuration (no per-dataset tuning), as a user would run
it: ``recfunnel prepare`` then ``recfunnel train`` in fresh processes, wall time included.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from recfunnel.report import metric_header, table

__all__ = ["bench_quality", "print_quality", "PROTOCOLS"]

PROTOCOLS = {
    "tfrs": [
        "movielens",
        "--variant",
        "ml-100k",
        "--label",
        "all",
        "--split",
        "random",
        "--val-fraction",
        "0",
        "--test-fraction",
        "0.2",
    ],
    "temporal": ["movielens", "--variant", "ml-100k", "--label", "all", "--split", "temporal", "--leave-last", "5"],
    "ctr": ["synthetic", "--rows", "300000"],
}
MODELS = {"tfrs": ["two-tower"], "temporal": ["two-tower"], "ctr": ["dlrm", "dcnv2"]}


def _recfunnel(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "recfunnel.cli", *args], check=True)
    return time.perf_counter() - start


def bench_quality(work: str | Path, protocols: list[str] | None = None, seed: int = 42) -> dict[str, Any]:
    work = Path(work)
    out: dict[str, Any] = {}
    for protocol in protocols or list(PROTOCOLS):
        data = work / f"data-{protocol}"
        _recfunnel("prepare", *PROTOCOLS[protocol], "--seed", str(seed), "--out", str(data), "--overwrite", "--quiet")
        manifest = json.loads((data / "manifest.json").read_text())
        for model in MODELS[protocol]:
            run = work / f"run-{protocol}-{model}"
            seconds = _recfunnel(
                "train", "--model", model, "--data", str(data), "--out", str(run), "--overwrite", "--quiet"
            )
            metrics = json.loads((run / "metrics.json").read_text())
            out[f"{protocol}/{model}"] = {
                "seconds": round(seconds, 1),
                "test": metrics["test"],
                "baselines": {k: v.get("test", {}) for k, v in metrics["baselines"].items()},
                "bayes_auc": manifest["extra"].get("bayes_auc", {}).get("test"),
                "epochs": metrics["early_stopping"]["epochs"],
            }
    return out


def print_quality(result: dict[str, Any]) -> None:
    for key, r in result.items():
        protocol, model = key.split("/")
        if protocol == "tfrs":
            cols = ["accuracy_at_100", "accuracy_at_100_no_exclusion", "accuracy_at_10", "recall_at_100"]
        elif protocol == "temporal":
            cols = ["recall_at_20", "ndcg_at_20", "recall_at_100", "ndcg_at_100"]
        else:
            cols = ["auc", "log_loss"]
        rows = [[model] + [r["test"].get(c) for c in cols]]
        rows += [[name.replace("_", "-")] + [m.get(c) for c in cols] for name, m in r["baselines"].items()]
        if r["bayes_auc"] is not None:
            rows.append(["bayes-optimal"] + [r["bayes_auc"]] + [None] * (len(cols) - 1))
        print(
            table(
                rows,
                ["model"] + [metric_header(c) for c in cols],
                title=f"\n{protocol}: {model} trained in {r['seconds']:.0f} s wall ({r['epochs']} epochs), test split",
            )
        )
