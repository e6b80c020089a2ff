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
import sys
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
from recfunnel.tracking.tracker import FALLBACK_DB, Tracker, file_sha256, package_versions
from recfunnel.train.candidates import CANDIDATES, check_source, describe, ensure_candidates, list_manifest
from recfunnel.train.checkpoint import latest_checkpoint
from recfunnel.train.compare import ranking_baselines, retrieval_baselines
from recfunnel.train.distributed import init_embeddings, init_world, table_shapes, wrap
from recfunnel.train.loop import fit
from recfunnel.train.losses import RankingLoss
from recfunnel.train.objectives import RankingObjective, RetrievalObjective, list_ks, sync
from recfunnel.train.sharding import forced_plan, plan_table
from recfunnel.train.summary import log_results, print_run_summary

__all__ = [
    "train",
    "check_compatible",
    "validation_metrics",
    "resume_config",
    "finished",
    "read_status",
    "METRICS",
    "STATUS",
]

METRICS = "metrics.json"
STATUS = "status.json"


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
    if config.two_stage:
        _check_two_stage(config, data, manifest)
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
    # raises on unknown features (a two-stage ranker reads its candidate lists' features)
    build_model(config, list_manifest(manifest, 2) if config.two_stage else manifest, device="meta")
    if not config.is_retrieval:
        RankingLoss(config.model.heads, manifest)  # raises on unknown labels
    if "train" not in manifest.splits:
        raise ConfigError(f"{data}: no train split")
    _early_stopping_metric(config)  # raises on a metric the model does not report


def _check_two_stage(config: RunConfig, data: str | Path, manifest: Manifest) -> None:
    """A ranker on a retriever's candidates: an interactions dataset with a val split, a binary
    first head, no sampled negatives (the lists hold the retriever's own)."""
    check_source(manifest, data)
    if config.train.sampled_negatives:
        raise ConfigError("train.sampled_negatives: not with --retriever; the candidate lists are the negatives")
    if len(config.model.heads) != 1 or config.model.heads[0].kind != "binary":
        raise ConfigError("--retriever: the ranker needs one binary head (label 1: the user took the candidate)")
    if not Path(config.ranking.retriever).exists():
        raise ConfigError(f"--retriever: {config.ranking.retriever}: no such run folder")


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
    names += ["loss"] + [f"{h.label}_loss" for h in heads] if len(heads) > 1 else ["loss"]
    if config.two_stage:  # the candidate lists re-ordered, the funnel's question, comes first
        ks = list_ks(config)
        lists = [f"{m}_at_{k}" for k in [min(ks, key=lambda k: abs(k - 10))] + ks for m in ("ndcg", "recall")]
        names = list(dict.fromkeys(lists)) + names
    return names


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
    write_text_atomic(out / "sharding_plan.txt", text + "\n")
    tracker.log_artifact(out / "sharding_plan.txt")
    if not quiet:
        print(text)


def resume_config(
    model_kind: str, out: str | Path, config_file: str | Path | None, overrides: list[str]
) -> tuple[RunConfig, Path | None, str]:
    """The interrupted run's config (``--set`` overrides on top, e.g. more epochs), its latest
    complete checkpoint, and a note for people. A run killed before its first complete checkpoint
    (or before it wrote anything) starts from the beginning, so that a job scheduler can rerun the
    same command after a preemption; the note says so. Mistakes are one-line errors."""
    out = Path(out)
    _no_config_file(config_file)
    if not (out / "config.yaml").is_file():
        return load_config(model_kind, None, overrides), None, f"{out}: no run to resume; starting it"
    saved = yaml.safe_load((out / "config.yaml").read_text())
    if saved.get("model_kind") != model_kind:
        raise ConfigError(f"--model: the run in {out} trained {saved.get('model_kind')!r}, not {model_kind!r}")
    found = latest_checkpoint(out / "checkpoints")
    if found is None:
        return with_overrides(saved, overrides), None, f"{out}: no complete checkpoint yet; starting the run again"
    return with_overrides(saved, overrides), found, f"{out}: resuming from {found.name}"


def _no_config_file(config_file: str | Path | None) -> None:
    if config_file is not None:
        raise ConfigError(
            "--config cannot be combined with --resume: the run keeps its own config.yaml "
            "(change single values with --set)"
        )


def finished(out: str | Path) -> bool:
    """Whether the run folder holds a finished run: its metrics.json, and a status.json that says
    so (runs from before status files existed have only the former)."""
    if not (Path(out) / METRICS).is_file():
        return False
    status = read_status(out)
    return status.get("state") == "finished" if status else True


def read_status(out: str | Path) -> dict[str, Any]:
    """``RUN_DIR/status.json``: ``{"state": "running" | "finished" | "failed", "exit_code", "message",
    "updated"}``; empty when there is none. A run killed outright stays "running"."""
    try:
        return json.loads((Path(out) / STATUS).read_text())
    except (OSError, ValueError):
        return {}


def _write_status(out: Path, state: str, exit_code: int | None = None, message: str = "") -> None:
    record = {
        "state": state,
        "exit_code": exit_code,
        "message": message,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_text_atomic(out / STATUS, json.dumps(record, indent=2) + "\n")


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
    of processes (from the beginning when it has none; nothing to do when it has finished).
    Returns the metrics written to ``out/metrics.json``. A run that fails before its first complete
    checkpoint leaves no run folder behind, unless the folder was there before.
    """
    data, out = str(data), Path(out)
    checkpoint, note = None, ""
    if resume:
        _no_config_file(config_file)
        if finished(out):
            _say(f"{out}: the run has finished; nothing to resume", quiet)
            return json.loads((out / METRICS).read_text())
        config, checkpoint, note = resume_config(model_kind, out, config_file, list(overrides))
    else:
        config = load_config(model_kind, config_file, list(overrides))
    manifest = load_manifest(data)
    check_compatible(config, data, manifest)
    metric = _early_stopping_metric(config)
    if not resume and finished(out) and not overwrite:
        raise RecfunnelError(f"{out}: already holds a finished run; choose another --out or pass --overwrite")
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    world = init_world()
    torch.manual_seed(config.train.seed)
    fresh = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RecfunnelError(f"{out}: cannot write the run folder there ({e.strerror})") from None
    if world.is_main:
        if note:
            _say(note, quiet)
        if checkpoint is None:  # an earlier run's must not be resumed, nor its results kept
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
            for stale in (METRICS, STATUS):
                (out / stale).unlink(missing_ok=True)
        write_text_atomic(out / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
        _write_status(out, "running")
    try:
        if config.two_stage:  # the ranker learns from the retriever's candidate lists
            if world.is_main:
                candidates = ensure_candidates(config, data, out, quiet)
                if not quiet:
                    print(describe(candidates), flush=True)
            sync()
            data = str(out / CANDIDATES)
            manifest = load_manifest(data)
        return _train(config, manifest, data, out, model_kind, metric, world, checkpoint, resume, quiet)
    except BaseException as err:
        if world.is_main:
            _after_failure(out, fresh, err)
        raise


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"recfunnel: {message}", file=sys.stderr, flush=True)


def _after_failure(out: Path, fresh: bool, err: BaseException) -> None:
    """Remove a run folder this run made and nothing can resume from; else record the failure."""
    tracked_here = (out / FALLBACK_DB).exists()  # the MLflow store fell back into the run folder: keep it
    if fresh and latest_checkpoint(out / "checkpoints") is None and not tracked_here:
        shutil.rmtree(out, ignore_errors=True)
        return
    code = getattr(err, "exit_code", 130 if isinstance(err, KeyboardInterrupt) else 1)
    if out.is_dir():
        _write_status(
            out, "failed", code, str(err).strip().splitlines()[-1][:500] if str(err).strip() else type(err).__name__
        )


def _train(
    config: RunConfig,
    manifest: Manifest,
    data: str,
    out: Path,
    model_kind: str,
    metric: str,
    world: Any,
    checkpoint: Path | None,
    resume: bool,
    quiet: bool,
) -> dict[str, Any]:
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
        tables = table_shapes(model)
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
    if world.is_main:
        _write_status(out, "finished", 0)
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
    if config.two_stage:
        metrics["candidates"] = {k: v for k, v in manifest.extra["candidates"].items() if k != "key"}
    if world.is_main:
        write_text_atomic(out / METRICS, json.dumps(metrics, indent=2) + "\n")
        log_results(tracker, metrics, result.history, trained, out, objective, config)
        if not quiet:
            print_run_summary(metrics, out)
    return metrics
