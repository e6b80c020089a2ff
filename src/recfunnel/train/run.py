"""``recfunnel train``: one function from a dataset and a config to a run folder and an MLflow run.

RUN_DIR/
    config.yaml      the resolved configuration
    metrics.json     best validation and test metrics, baselines, throughput, MLflow run id
    model/           the final (best) model, unsharded, self-contained (see recfunnel.store)
    checkpoints/     resumable checkpoints (step-N/, latest) and best.pt (see checkpoint.py)
    plots/           training curves, calibration or baseline comparison (also in MLflow)
    mlflow.json      where the run is tracked
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from recfunnel.config import RunConfig, load_config, with_overrides
from recfunnel.data.format.manifest import Manifest, load_manifest
from recfunnel.errors import ConfigError, RecfunnelError
from recfunnel.files import write_text_atomic
from recfunnel.store.model import MODEL_DIR, build_model, load_trained, save_model
from recfunnel.tracking.tracker import Tracker, file_sha256, package_versions
from recfunnel.train.checkpoint import latest_checkpoint
from recfunnel.train.compare import ranking_baselines, retrieval_baselines
from recfunnel.train.distributed import embedding_collections, init_embeddings, init_world, wrap
from recfunnel.train.loop import fit
from recfunnel.train.losses import RankingLoss
from recfunnel.train.objectives import RankingObjective, RetrievalObjective
from recfunnel.train.sharding import forced_plan, plan_table
from recfunnel.train.summary import log_results, print_run_summary

__all__ = ["train", "check_compatible", "validation_metrics", "resume_config", "METRICS"]

METRICS = "metrics.json"


def check_compatible(config: RunConfig, data: str | Path, manifest: Manifest | None = None) -> None:
    """Fail before training when the dataset cannot feed the model (features, labels, kind).
    ``manifest``: ``data``'s, when the caller has read it."""
    manifest = manifest if manifest is not None else load_manifest(data)
    if config.is_retrieval:
        if manifest.kind != "interactions":
            raise ConfigError(
                f"{data}: two-tower needs a user-item interactions dataset, this one is "
                f"{manifest.kind!r}; train a ranker (dlrm, dcnv2, deepfm) on it instead"
            )
    if config.train.sampled_negatives:
        if config.is_retrieval:
            raise ConfigError(
                "train.sampled_negatives: for rankers; a two-tower model samples its own (retrieval.extra_negatives)"
            )
        if manifest.kind != "interactions":
            raise ConfigError(
                f"train.sampled_negatives: needs a user-item interactions dataset, {data} is {manifest.kind!r}"
            )
        if any(h.kind != "binary" for h in config.model.heads):
            raise ConfigError(
                "train.sampled_negatives: only binary heads can take sampled negatives (label 0); "
                f"the model has {[f'{h.label}: {h.kind}' for h in config.model.heads]}"
            )
    build_model(config, manifest, device="meta")  # raises on unknown features
    if not config.is_retrieval:
        RankingLoss(config.model.heads, manifest)  # raises on unknown labels
    if "train" not in manifest.splits:
        raise ConfigError(f"{data}: no train split")
    _early_stopping_metric(config)  # raises on a metric the model does not report


def _objective(config: RunConfig, manifest: Manifest, data: str, model: torch.nn.Module) -> Any:
    if config.is_retrieval:
        return RetrievalObjective(config, manifest, data, model)
    return RankingObjective(config, manifest, data)


HEAD_METRICS = {
    "binary": ("auc", "log_loss", "calibration"),
    "regression": ("rmse", "mae"),
    "multiclass": ("accuracy",),
}


def validation_metrics(config: RunConfig) -> list[str]:
    """Names of the metrics a validation pass reports (the first is the default to stop on)."""
    if config.is_retrieval:
        ks = config.eval.ks
        return (
            [f"recall_at_{max(ks)}"]
            + [f"{m}_at_{k}" for m in ("recall", "ndcg", "hit_rate", "accuracy") for k in ks]
            + ["mrr"]
        )
    heads = config.model.heads
    names = [(f"{h.label}_" if len(heads) > 1 else "") + m for h in heads for m in HEAD_METRICS[h.kind]]
    return names + (["loss"] + [f"{h.label}_loss" for h in heads] if len(heads) > 1 else ["loss"])


def _early_stopping_metric(config: RunConfig) -> str:
    known = validation_metrics(config)
    metric = config.train.early_stopping_metric
    if metric == "auto":
        return known[0]
    if metric not in known:
        raise ConfigError(
            f"train.early_stopping_metric: {metric!r} is not a validation metric of this model; "
            f"choose from {sorted(set(known))}"
        )
    return metric


def _report_plan(
    plan: Any, tables: dict[str, tuple[int, int]], config: RunConfig, out: Path, tracker: Any, world: Any, quiet: bool
) -> None:
    """Print the applied sharding plan (rank 0) and keep it in the run folder and MLflow."""
    if not world.is_main:
        return
    opt = config.train.embedding_optimizer.name
    text = plan_table(
        plan,
        tables,
        optimizer_floats_per_row={
            "rowwise_adagrad": 1,
            "adagrad": config.model.embedding_dim,
            "adam": 2 * config.model.embedding_dim,
        }.get(opt, 0),
    )
    (out / "sharding_plan.txt").write_text(text + "\n")
    tracker.log_artifact(out / "sharding_plan.txt")
    if not quiet:
        print(text)


def resume_config(
    model_kind: str, out: str | Path, config_file: str | Path | None, overrides: list[str]
) -> tuple[RunConfig, Path]:
    """The interrupted run's config (``--set`` overrides on top, e.g. more epochs) and its latest
    checkpoint; one-line errors when there is nothing to resume."""
    out = Path(out)
    if config_file is not None:
        raise ConfigError(
            "--config cannot be combined with --resume: the run keeps its own config.yaml "
            "(change single values with --set)"
        )
    if (out / METRICS).exists():
        raise RecfunnelError(f"{out}: the run has finished ({METRICS} is written); nothing to resume")
    if not (out / "config.yaml").is_file():
        raise RecfunnelError(f"{out}: no run to resume (no config.yaml); start it without --resume")
    saved = yaml.safe_load((out / "config.yaml").read_text())
    if saved.get("model_kind") != model_kind:
        raise ConfigError(f"--model: the run in {out} trained {saved.get('model_kind')!r}, not {model_kind!r}")
    found = latest_checkpoint(out / "checkpoints")
    if found is None:
        raise RecfunnelError(
            f"{out}/checkpoints: no complete checkpoint to resume from; start the run again "
            f"without --resume (with --overwrite)"
        )
    return with_overrides(saved, overrides), found


def train(
    model_kind: str,
    data: str | Path,
    out: str | Path,
    config_file: str | Path | None = None,
    overrides: list[str] = (),
    *,
    overwrite: bool = False,
    quiet: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Train ``model_kind`` on the prepared dataset ``data``; write the run folder ``out``.

    ``resume``: continue the interrupted run in ``out`` from its latest checkpoint, on any number
    of processes. Returns the metrics written to ``out/metrics.json``.
    """
    data, out = str(data), Path(out)
    checkpoint = None
    if resume:
        config, checkpoint = resume_config(model_kind, out, config_file, list(overrides))
    else:
        config = load_config(model_kind, config_file, list(overrides))
    manifest = load_manifest(data)
    check_compatible(config, data, manifest)
    metric = _early_stopping_metric(config)
    if not resume and (out / METRICS).exists() and not overwrite:
        raise RecfunnelError(f"{out}: already holds a finished run; choose another --out or pass --overwrite")
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    world = init_world()
    torch.manual_seed(config.train.seed)
    out.mkdir(parents=True, exist_ok=True)
    if world.is_main:
        if not resume:
            shutil.rmtree(out / "checkpoints", ignore_errors=True)  # an earlier run's must not be resumed
        write_text_atomic(out / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    tracker = Tracker.start(config.tracking, run_dir=out, enabled=world.is_main, quiet=quiet, resume=resume)
    with tracker:
        tracker.log_params({**config.to_dict(), "data": data})
        tracker.set_tags(
            {
                "recfunnel.model": model_kind,
                "recfunnel.data": data,
                "recfunnel.manifest_sha256": file_sha256(Path(data) / "manifest.json"),
                "recfunnel.world_size": str(world.world_size),
                **package_versions(),
            }
        )
        model = build_model(config, manifest, device="meta")
        tables = {
            c.name: (c.num_embeddings, c.embedding_dim)
            for ebc in embedding_collections(model)
            for c in ebc.embedding_bag_configs()
        }
        plan = None
        if config.sharding.forced:
            plan = forced_plan(
                model,
                config.sharding,
                world.world_size,
                int(os.environ.get("LOCAL_WORLD_SIZE", world.world_size)),
                world.device.type,
            )
        dmp, optimizer, plan = wrap(
            model,
            world,
            config.train.embedding_optimizer,
            config.train.dense_optimizer,
            plan=plan,
            batch_size=config.train.batch_size,
        )
        init_embeddings(dmp, config.train.seed)  # the same tables whatever the sharding
        _report_plan(plan, tables, config, out, tracker, world, quiet)
        objective = _objective(config, manifest, data, dmp)
        has_val = "val" in manifest.splits and manifest.splits["val"].rows > 0
        result = fit(
            dmp,
            optimizer,
            objective,
            config,
            data,
            manifest,
            world,
            out / "checkpoints",
            metric,
            has_val=has_val,
            quiet=quiet,
            log=tracker.log_metrics,
            resume=checkpoint,
        )
        metrics = _finish(config, manifest, data, out, objective, result, world, tracker, metric, quiet)
    return metrics


def _finish(config, manifest, data, out, objective, result, world, tracker, metric, quiet) -> dict[str, Any]:
    """Best weights -> model folder; test metrics and baselines; metrics.json, MLflow, summary."""
    if world.is_main:  # only rank 0 wrote the checkpoint
        best = torch.load(out / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
        save_model(out / MODEL_DIR, config, manifest, best["state_dict"], data)
    torch.distributed.barrier()
    trained = load_trained(out / MODEL_DIR)
    splits = [s for s in ("val", "test") if s in manifest.splits and manifest.splits[s].rows > 0]
    evaluated: dict[str, dict[str, float]] = {}
    start = time.perf_counter()
    for split in splits:
        if config.is_retrieval:
            evaluated[split] = objective.evaluate(
                trained.model, split, torch.device("cpu"), no_exclusion=split == "test"
            )
        else:
            evaluated[split] = objective.evaluate(trained.model, split, torch.device("cpu"))
    eval_seconds = time.perf_counter() - start
    baselines: dict[str, Any] = {}
    # logistic regression sees the split's rows as they are; the model's metrics with sampled
    # negatives are on other rows, so the two would not compare
    if config.eval.baselines and (config.is_retrieval or not config.train.sampled_negatives):
        if config.is_retrieval:
            if world.is_main:
                baselines = retrieval_baselines(objective, splits, config.eval.ease_l2, no_exclusion=True)
        else:
            multi = len(config.model.heads) > 1
            baselines = ranking_baselines(
                data, manifest, splits, f"{manifest.labels[0].name}_" if multi else "", fit=world.is_main
            )
    metrics = {
        "model": config.model_kind,
        "data": data,
        **evaluated,
        "baselines": baselines,
        "early_stopping": {
            "metric": metric,
            "best_epoch": result.best_epoch,
            "epochs": result.epochs,
            "stopped_early": result.stopped_early,
            "best_value": result.best.get(metric),
        },  # as measured on the sharded model
        "train": {
            "steps": result.steps,
            "seconds": round(result.seconds, 2),
            "samples_per_s": round(result.samples_per_s, 1),
            "world_size": world.world_size,
            "global_batch_size": config.train.batch_size * world.world_size,
            "eval_seconds": round(eval_seconds, 2),
            "resumed_from_step": result.resumed_from,
            # per epoch: real rows seen by all ranks and an order-free checksum of them
            "epochs": result.audit,
            "train_rows": manifest.splits["train"].rows,
        },
        "mlflow": {"run_id": tracker.run_id, "tracking_uri": tracker.tracking_uri},
    }
    if world.is_main:
        write_text_atomic(out / METRICS, json.dumps(metrics, indent=2) + "\n")
        log_results(tracker, metrics, result.history, trained, out, objective, config)
        if not quiet:
            print_run_summary(metrics, out)
    return metrics
