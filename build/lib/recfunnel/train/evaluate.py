"""``recfunnel evaluate --run RUN_DIR``: a finished run's metrics beside its baselines; with
``--data DIR``, the run's saved model evaluated afresh on a dataset (the one it was trained on, or
another prepared with the same features)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from recfunnel.data.format.manifest import Manifest, load_manifest
from recfunnel.errors import ConfigError, RecfunnelError
from recfunnel.store.model import load_trained
from recfunnel.train.distributed import init_world
from recfunnel.train.objectives import RankingObjective, RetrievalObjective
from recfunnel.train.summary import print_run_summary

__all__ = ["load_metrics", "evaluate_run", "check_model_matches"]


def load_metrics(run: str | Path) -> dict[str, Any]:
    path = Path(run) / "metrics.json"
    if not path.is_file():
        raise RecfunnelError(f"{path}: missing; is {run} a finished run of `recfunnel train`?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RecfunnelError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None


def check_model_matches(model_manifest: Manifest, data: str | Path, manifest: Manifest) -> None:
    """A dataset can feed a trained model only with the same features, cardinalities and labels."""
    theirs = {f.name: f for f in manifest.sparse}
    for f in model_manifest.sparse:
        if f.name not in theirs:
            raise ConfigError(f"{data}: no sparse feature {f.name!r}, which the model reads")
        if theirs[f.name].cardinality != f.cardinality:
            raise ConfigError(
                f"{data}: feature {f.name!r} has cardinality {theirs[f.name].cardinality:,}, the "
                f"model's table has {f.cardinality:,} rows; prepare the data with the model's "
                f"vocabularies"
            )
    dense = [f.name for f in manifest.dense]
    if dense != [f.name for f in model_manifest.dense]:
        raise ConfigError(
            f"{data}: dense features {dense}, the model was trained on {[f.name for f in model_manifest.dense]}"
        )
    labels = [label.name for label in manifest.labels]
    if labels != [label.name for label in model_manifest.labels]:
        raise ConfigError(
            f"{data}: labels {labels}, the model was trained with {[label.name for label in model_manifest.labels]}"
        )


def _recompute(run: str | Path, data: str | Path) -> dict[str, Any]:
    trained = load_trained(run)
    manifest = load_manifest(data)
    check_model_matches(trained.manifest, data, manifest)
    init_world()
    cpu = torch.device("cpu")
    if trained.config.is_retrieval:
        objective = RetrievalObjective(trained.config, manifest, str(data), trained.model)
    else:
        objective = RankingObjective(trained.config, manifest, str(data))
    out: dict[str, Any] = {"model": trained.kind, "data": str(data), "baselines": {}}
    for split in ("val", "test"):
        if split in manifest.splits and manifest.splits[split].rows > 0:
            kwargs = {"no_exclusion": split == "test"} if trained.config.is_retrieval else {}
            out[split] = objective.evaluate(trained.model, split, cpu, **kwargs)
    return out


def evaluate_run(run: str | Path, as_json: bool = False, data: str | Path | None = None) -> dict[str, Any]:
    metrics = load_metrics(run) if data is None else _recompute(run, data)
    if as_json:
        print(json.dumps(metrics, indent=None))
    else:
        print_run_summary(metrics, Path(run))
    return metrics
