"""How much each stage of the funnel adds, on a held-out split: most-popular and EASE (fitted on
the same training rows) beside retrieval alone, retrieval + ranking, and + re-ranking, with the
same metrics (recall@K, NDCG@K, ...) and the same exclusions (each user's training and validation
items) as `recfunnel train` reports.

    recfunnel evaluate --run TWO_TOWER_RUN --ranker RANKER_RUN [--index INDEX_DIR] [--json]

Each variant's top-K lists go through :func:`recfunnel.metrics.retrieval.evaluate_topk` as scores
that are -inf outside the list, so an item the funnel did not return is never a hit.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from recfunnel.baselines.ease import EASE
from recfunnel.config import TrackingConfig
from recfunnel.data.format.pairs import read_pairs
from recfunnel.errors import RecfunnelError
from recfunnel.funnel.batch import recommend_users
from recfunnel.funnel.pipeline import Funnel, FunnelConfig
from recfunnel.funnel.rerank import jaccard_of_members
from recfunnel.metrics.retrieval import evaluate_topk, relative_change_interval
from recfunnel.report import metric_header, table
from recfunnel.store.model import MODEL_DIR
from recfunnel.tracking.tracker import Tracker

__all__ = ["evaluate_funnel", "print_funnel_evaluation", "log_funnel_evaluation"]

EASE_CHUNK = 1024  # users scored at once: (1024, items) floats


def _lists(funnel: Funnel, users: np.ndarray, k: int) -> dict[int, np.ndarray]:
    """User index -> item indices of the funnel's top ``k``, best first."""
    rows = funnel.users.positions_of(users)
    raw = funnel.users.raw_ids[rows].tolist()
    out: dict[int, np.ndarray] = {}
    item_index = pd.Series(funnel.items.index, index=funnel.items.raw_ids)
    for frame in recommend_users(funnel, raw, k):
        for user_id, group in frame.groupby("user_id", sort=False):
            out[int(funnel.users.index[funnel.user_rows.get_loc(user_id)])] = item_index.loc[
                group["item_id"]
            ].to_numpy()
    return out


def _popular(funnel: Funnel, users: np.ndarray, k: int) -> dict[int, np.ndarray]:
    out = {}
    for u in users:
        seen = funnel.interactions.seen(int(u))
        out[int(u)] = funnel.popular[~np.isin(funnel.popular, seen)][:k]
    return out


def _ease(funnel: Funnel, data: Path, users: np.ndarray, k: int) -> dict[int, np.ndarray] | str:
    """EASE fitted on the training split's positives (as `recfunnel train`'s baseline), each user
    scored from their training and validation positives (what the funnel knows of them), top ``k``
    with the funnel's exclusions; or why it was skipped."""
    train = read_pairs(data, "train")
    keep = train.labels > 0
    n_users, n_items = funnel.users.cardinality - 1, funnel.items.cardinality - 1
    try:
        model = EASE().fit(train.users[keep], train.items[keep], n_users, n_items)
    except RecfunnelError as e:  # too many items for a dense item-item matrix
        return str(e)
    known = funnel.interactions.pairs  # each user scored from what the funnel knows of them: train + val
    model = model.knowing(known.users[known.labels > 0], known.items[known.labels > 0])
    out: dict[int, np.ndarray] = {}
    for start in range(0, len(users), EASE_CHUNK):
        chunk = users[start : start + EASE_CHUNK]
        scores = model.score_users(chunk)
        scores[:, 0] = -torch.inf
        for row, u in enumerate(chunk):
            scores[row, torch.from_numpy(funnel.interactions.seen(int(u)))] = -torch.inf
        top = torch.topk(scores, min(k, n_items), dim=1)
        for row, u in enumerate(chunk):
            found = torch.isfinite(top.values[row])
            out[int(u)] = top.indices[row][found].numpy()
    return out


def _metrics(
    lists: dict[int, np.ndarray],
    pairs: tuple[np.ndarray, np.ndarray],
    n_items: int,
    ks: list[int],
    by_user: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    def score(users: np.ndarray) -> torch.Tensor:
        scores = torch.full((len(users), n_items + 1), -torch.inf)
        for row, u in enumerate(users):
            items = lists.get(int(u), np.zeros(0, np.int64))
            scores[row, torch.from_numpy(items)] = torch.arange(len(items), 0, -1, dtype=torch.float32)
        return scores

    return evaluate_topk(score, test_users=pairs[0], test_items=pairs[1], n_items=n_items, ks=ks, by_user=by_user)


# the gaps a reader of the funnel table asks about: does each stage beat the one before, and EASE
CHANGES = (("retrieval", "ease"), ("retrieval+ranking", "retrieval"), ("retrieval+ranking", "ease"))


def _changes(by_user: dict[str, dict[str, np.ndarray]], k: int) -> list[dict[str, Any]]:
    """NDCG@k of each of CHANGES' variants against the other: the change and its 95 % interval by
    a paired bootstrap over the evaluated users (both variants evaluate the same users)."""
    out = []
    for ours, theirs in CHANGES:
        if ours not in by_user or theirs not in by_user:
            continue
        a, b = by_user[ours][f"ndcg_at_{k}"], by_user[theirs][f"ndcg_at_{k}"]
        low, high = relative_change_interval(a, b)
        change = float(a.mean() / max(b.mean(), 1e-12) - 1)
        out.append(
            {"variant": ours, "against": theirs, "metric": f"ndcg_at_{k}", "change": change, "interval": [low, high]}
        )
    return out


def _diversity(funnel: Funnel, lists: dict[int, np.ndarray], k: int) -> float:
    """Intra-list diversity of the top ``k`` over the funnel's diversity feature (genres): the mean,
    over users, of 1 - the mean Jaccard similarity of the pairs of items in the list."""
    out = []
    for items in lists.values():
        if len(items) < 2:
            continue
        members = funnel._genre_sets(funnel.items.positions_of(items[:k]))
        similar = jaccard_of_members(members)
        n = len(similar)
        out.append(1.0 - (similar.sum() - np.trace(similar)) / (n * (n - 1)))
    return float(np.mean(out)) if out else 0.0


def run_data(run: str | Path, data: str | Path | None = None) -> Path:
    """The dataset a run trained on (its metrics.json says), or ``data`` when given: evaluation
    needs its held-out split (serving needs nothing of it)."""
    if data is not None:
        return Path(data)
    run = Path(run)
    folders = [run.parent] if run.name == MODEL_DIR else [run, run.parent]
    for path in (folder / "metrics.json" for folder in folders):
        if path.is_file():
            recorded = Path(json.loads(path.read_text())["data"])
            if recorded.is_dir():
                return recorded
            raise RecfunnelError(f"{path}: the run trained on {recorded}, which is not here; pass --data DIR")
    raise RecfunnelError(f"{run}: no metrics.json saying which dataset it trained on; pass --data DIR")


def evaluate_funnel(
    run: str | Path,
    ranker: str | Path | None = None,
    index: str | Path | None = None,
    split: str = "test",
    ks: list[int] = (10, 20),
    data: str | Path | None = None,
    config: FunnelConfig | None = None,
) -> dict[str, Any]:
    """Metrics of each funnel variant on ``split`` of the run's dataset."""
    funnel = Funnel.load(run, index=index, ranker=ranker, config=config)
    pairs = read_pairs(run_data(run, data), split)
    # users seen before the split, as `recfunnel train` evaluates: a user new at a time cut is a cold start
    known = np.diff(funnel.interactions.indptr)[np.minimum(pairs.users, len(funnel.interactions.indptr) - 2)] > 0
    positive = (pairs.labels > 0) & known
    users, items = pairs.users[positive], pairs.items[positive]
    if not len(users):
        raise RecfunnelError(f"{split}: no positive pairs to evaluate on")
    ks = sorted(set(ks))
    k = max(ks)
    n_items = funnel.items.cardinality - 1
    eval_users = np.unique(users)
    variants: dict[str, Callable[[], dict[int, np.ndarray] | str]] = {  # each: top-k lists, or why skipped
        "most_popular": lambda: _popular(funnel, eval_users, k),
        "ease": lambda: _ease(funnel, run_data(run, data), eval_users, k),
        "retrieval": lambda: _lists(funnel.variant(rank=False, rerank="none"), eval_users, k),
    }
    if ranker is not None:
        variants["retrieval+ranking"] = lambda: _lists(funnel.variant(rerank="none"), eval_users, k)
    if funnel.config.rerank != "none" and funnel.diversity is not None:
        variants["funnel"] = lambda: _lists(funnel, eval_users, k)  # + re-ranking
    out: dict[str, Any] = {
        "split": split,
        "users": int(len(eval_users)),
        "k": k,
        "candidates": funnel.config.candidates,
        "variants": {},
    }
    by_user: dict[str, dict[str, np.ndarray]] = {}
    for name, top_k in variants.items():
        start = time.perf_counter()
        lists = top_k()
        if isinstance(lists, str):
            out["variants"][name] = {"skipped": lists}
            continue
        by_user[name] = {}
        metrics = _metrics(lists, (users, items), n_items, ks, by_user[name])
        if funnel.diversity is not None:
            metrics[f"diversity_at_{min(ks)}"] = _diversity(funnel, lists, min(ks))
        metrics["seconds"] = round(time.perf_counter() - start, 2)
        out["variants"][name] = metrics
    out["changes"] = _changes(by_user, min(ks))
    return out


def print_funnel_evaluation(result: dict[str, Any]) -> None:
    names = {
        "most_popular": "most-popular",
        "ease": "EASE (baseline)",
        "retrieval": "retrieval (two-tower + index)",
        "retrieval+ranking": "+ ranking",
        "funnel": "+ ranking + re-ranking (MMR)",
    }
    ks = sorted(
        {int(key.rsplit("_", 1)[1]) for m in result["variants"].values() for key in m if key.startswith("ndcg_at_")}
    )
    cols = [f"{m}_at_{k}" for k in ks for m in ("recall", "ndcg")]
    cols += sorted({key for m in result["variants"].values() for key in m if key.startswith("diversity_at_")})
    rows = [
        [names.get(name, name)] + [m.get(c) for c in cols] + [m["seconds"]]
        for name, m in result["variants"].items()
        if "skipped" not in m
    ]
    print(
        table(
            rows,
            ["funnel"] + [metric_header(c) for c in cols] + ["seconds"],
            title=f"{result['split']} split, {result['users']:,} users, top {result['k']} from "
            f"{result['candidates']} candidates",
        )
    )
    if result.get("changes"):
        rows = [
            [names.get(c["variant"], c["variant"]), names.get(c["against"], c["against"])]
            + [f"{100 * c['change']:+.1f} %", f"{100 * c['interval'][0]:+.1f} % .. {100 * c['interval'][1]:+.1f} %"]
            for c in result["changes"]
        ]
        metric = metric_header(result["changes"][0]["metric"])
        print()
        print(
            table(
                rows,
                ["variant", "against", f"{metric} change", "95 % interval"],
                title="gaps, with their 95 % interval over these users (paired bootstrap over users)",
            )
        )


def log_funnel_evaluation(
    result: dict[str, Any], run: str | Path, ranker: str | Path | None, index: str | Path | None, config: FunnelConfig
) -> str:
    """The evaluation as an MLflow run named ``funnel`` beside the training runs; returns its id."""

    def run_id(folder: str | Path | None) -> str:
        record = Path(folder) / "mlflow.json" if folder else None
        return json.loads(record.read_text())["run_id"] if record and record.is_file() else ""

    with (
        tempfile.TemporaryDirectory() as scratch,
        Tracker.start(TrackingConfig(run_name="funnel"), run_dir=Path(scratch), quiet=True) as tracker,
    ):
        tracker.log_params(
            {
                "funnel": dataclasses.asdict(config),
                "retriever_run": str(run),
                "ranker_run": str(ranker or ""),
                "index": str(index or "exact, in memory"),
                "split": result["split"],
            }
        )
        tracker.set_tags(
            {
                "recfunnel.model": "funnel",
                "recfunnel.retriever_mlflow_run": run_id(run),
                "recfunnel.ranker_mlflow_run": run_id(ranker),
            }
        )
        tracker.log_metrics(
            {
                f"{variant.replace('+', '_plus_')}_{name}": value
                for variant, metrics in result["variants"].items()
                for name, value in metrics.items()
                if name not in ("users", "pairs", "skipped")
            }
            | {
                f"{c['variant'].replace('+', '_plus_')}_vs_{c['against']}_{c['metric']}_{part}": value
                for c in result.get("changes", [])
                for part, value in (("change", c["change"]), ("low", c["interval"][0]), ("high", c["interval"][1]))
            }
        )
        return tracker.run_id
