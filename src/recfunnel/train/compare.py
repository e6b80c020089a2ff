"""Baselines fitted on the same split in the same run, so a model's numbers always have context:
most-popular and EASE for retrieval, logistic regression for ranking."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from recfunnel.baselines.ease import EASE
from recfunnel.baselines.logistic import logistic_regression
from recfunnel.baselines.popular import MostPopular
from recfunnel.data.format.manifest import Manifest
from recfunnel.data.format.pairs import earlier_splits, item_popularity
from recfunnel.data.format.read import read_split
from recfunnel.errors import RecfunnelError

__all__ = ["retrieval_baselines", "ranking_baselines"]


def retrieval_baselines(
    objective: Any, splits: list[str], l2: float, no_exclusion: bool = False
) -> dict[str, dict[str, Any]]:
    """{baseline: {split: metrics}} for most-popular and EASE, on the objective's data."""
    manifest = objective.manifest
    n_items = manifest.feature(objective.item_key).cardinality - 1
    n_users = manifest.feature(manifest.roles["user"]).cardinality - 1
    train = objective.train_pairs
    keep = train.labels > 0
    out: dict[str, dict[str, Any]] = {}
    fitted: dict[str, Any] = {"most_popular": MostPopular.of(item_popularity(train, n_items + 1))}
    try:
        start = time.perf_counter()
        fitted["ease"] = EASE(l2=l2).fit(train.users[keep], train.items[keep], n_users, n_items)
        fitted["ease"].seconds = time.perf_counter() - start
    except RecfunnelError as e:  # too many items for a dense item-item matrix
        out["ease"] = {"skipped": str(e)}
    for name, model in fitted.items():
        out[name] = {}
        for split in splits:
            if name == "ease":  # scoring each user from what they did before the split, as the model does
                before = [objective.pairs(s) for s in earlier_splits(split, manifest.splits)]
                model = model.knowing(
                    np.concatenate([p.users[p.labels > 0] for p in before]),
                    np.concatenate([p.items[p.labels > 0] for p in before]),
                )
            out[name][split] = objective.evaluate_scores(model.score_users, split, no_exclusion and split == "test")
    return out


def ranking_baselines(
    data: str | Path, manifest: Manifest, splits: list[str], prefix: str = "", fit: bool = True
) -> dict[str, dict[str, Any]]:
    """{"logistic_regression": {split: metrics}} on one-hot sparse + dense features, for the
    dataset's first label; metric names get ``prefix`` (a multi-head model's are per label).

    Every rank must call this (opening a StreamingDataset is collective); only ``fit`` ranks fit.
    """
    _, train = read_split(data, "train", manifest)
    evaluated = {split: read_split(data, split, manifest)[1] for split in splits}
    if not fit:
        return {}
    result = logistic_regression(train, evaluated, manifest)
    return {
        "logistic_regression": {
            split: ({f"{prefix}{k}": v for k, v in m.items()} if split in splits else m) for split, m in result.items()
        }
    }
