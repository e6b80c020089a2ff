"""Model quality on the issue's protocols, each beside the baselines of the same run.

- ``tfrs``: MovieLens 100k, random 80/20 split of all ratings, every rating a positive (the
  TensorFlow Recommenders tutorial's protocol): two-tower top-100 accuracy with the user's
  training items excluded, and without exclusion, beside most-popular and EASE.
- ``temporal``: MovieLens 100k, each user's last ratings held out: recall@20 and NDCG@20 of the
  two-tower beside most-popular and EASE.
- ``ctr``: synthetic Criteo-shaped data with a known Bayes-optimal AUC: DLRM and DCNv2 test AUC
  beside it and beside logistic regression.
- ``funnel-temporal``, ``funnel-time`` and their ``-ids`` twins: MovieLens 100k split in time
  (each user's last 5 ratings held out; one global time cut), with the MovieLens side features or
  with ids and timestamps only: a two-tower, a DLRM trained on its candidates (``--retriever``),
  and ``recfunnel evaluate`` of the funnel: NDCG@10 of retrieval alone and + ranking beside
  most-popular and EASE, for the same users.

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
FUNNEL = {  # protocol -> (split options, ids and timestamps only)
    "funnel-temporal": (["--split", "temporal", "--leave-last", "5"], False),
    "funnel-temporal-ids": (["--split", "temporal", "--leave-last", "5"], True),
    "funnel-time": (["--split", "time"], False),
    "funnel-time-ids": (["--split", "time"], True),
}
CHOICES = [*PROTOCOLS, *FUNNEL]


def _recfunnel(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "recfunnel.cli", *args], check=True)
    return time.perf_counter() - start


def bench_quality(work: str | Path, protocols: list[str] | None = None, seed: int = 42) -> dict[str, Any]:
    work = Path(work)
    out: dict[str, Any] = {}
    for protocol in protocols or CHOICES:
        if protocol in FUNNEL:
            out[protocol] = _funnel(work, protocol, seed)
            continue
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


def _ratings_csv(work: Path) -> Path:
    """MovieLens 100k's ratings alone (user, item, rating, timestamp), as a user's own log would be."""
    import pandas as pd  # only the funnel protocols need it

    from recfunnel.data.sources.fetch import fetch_movielens

    path = work / "ml-100k-ratings.csv"
    if not path.is_file():
        frame = pd.read_csv(fetch_movielens(quiet=True) / "ml-100k.inter", sep="\t")
        frame.columns = [c.split(":")[0] for c in frame.columns]
        work.mkdir(parents=True, exist_ok=True)
        frame[["user_id", "item_id", "rating", "timestamp"]].to_csv(path, index=False)
    return path


def _funnel(work: Path, protocol: str, seed: int) -> dict[str, Any]:
    split, ids_only = FUNNEL[protocol]
    data, tt, ranker = (work / f"{kind}-{protocol}" for kind in ("data", "tt", "dlrm"))
    source = ["interactions", "--input", str(_ratings_csv(work))] if ids_only else ["movielens", "--variant", "ml-100k"]
    _recfunnel(
        "prepare", *source, "--label", "all", *split, "--seed", str(seed), "--out", str(data), "--overwrite", "--quiet"
    )
    seconds = _recfunnel(
        "train", "--model", "two-tower", "--data", str(data), "--out", str(tt), "--overwrite", "--quiet"
    )
    seconds += _recfunnel(
        "train",
        "--model",
        "dlrm",
        "--data",
        str(data),
        "--retriever",
        str(tt),
        "--out",
        str(ranker),
        "--overwrite",
        "--quiet",
    )
    done = subprocess.run(
        [sys.executable, "-m", "recfunnel.cli", "evaluate", "--run", str(tt), "--ranker", str(ranker), "--json"],
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(done.stdout)
    return {
        "seconds": round(seconds, 1),
        "users": result["users"],
        "variants": result["variants"],
        "changes": result["changes"],
    }


def _print_funnel(result: dict[str, Any]) -> None:
    names = ("most_popular", "ease", "retrieval", "retrieval+ranking")
    rows = []
    for protocol, r in result.items():
        ndcg = {name: r["variants"].get(name, {}).get("ndcg_at_10") for name in names}
        gaps = {(c["variant"], c["against"]): c for c in r.get("changes", [])}
        ratios = [_gap(gaps.get(pair)) for pair in (("retrieval+ranking", "retrieval"), ("retrieval+ranking", "ease"))]
        ratios.append(_gap(gaps.get(("retrieval", "ease"))))
        rows.append([protocol, r["users"], *ndcg.values(), *ratios, r["seconds"]])
    print(
        table(
            rows,
            [
                "protocol",
                "users",
                "most-popular",
                "EASE",
                "retrieval",
                "+ ranking",
                "rank/retr",
                "rank/EASE",
                "retr/EASE",
                "s",
            ],
            title="\nthe funnel on MovieLens 100k split in time: test NDCG@10 (same users, same exclusions); "
            "gaps with their 95 % interval over the users (paired bootstrap)",
        )
    )


def _gap(change: dict[str, Any] | None) -> str | None:
    if change is None:
        return None
    low, high = change["interval"]
    return f"{change['change']:+.1%} ({low:+.0%}..{high:+.0%})"


def print_quality(result: dict[str, Any]) -> None:
    funnel = {k: v for k, v in result.items() if k in FUNNEL}
    result = {k: v for k, v in result.items() if k not in FUNNEL}
    if funnel:
        _print_funnel(funnel)
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
