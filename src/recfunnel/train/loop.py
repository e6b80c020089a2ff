"""The training loop: epochs over the streaming loader, validation every epoch, early stopping on a
chosen metric, the best weights kept on disk, resumable checkpoints every N steps and at each
epoch end, a NaN loss stopping the run with the last good checkpoint intact.

Every epoch is audited: the real rows seen (all ranks) and an order-free checksum of their ids and
labels are kept with the checkpoint, so a resumed epoch can be shown to have seen each row once.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.types import ShardedTensor
from tqdm import tqdm

from recfunnel.config import RunConfig
from recfunnel.data.format.manifest import Manifest
from recfunnel.data.stream.loader import StreamingBatchLoader
from recfunnel.errors import RecfunnelError
from recfunnel.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from recfunnel.train.distributed import World

__all__ = ["TrainingError", "FitResult", "fit", "full_state_dict", "rows_per_batch", "LOWER_IS_BETTER"]

LOWER_IS_BETTER = ("loss", "rmse", "mae")  # suffixes: log_loss, and a multi-head model's rating_rmse


class TrainingError(RecfunnelError):
    """Training could not go on (e.g. the loss became NaN); checkpoints written so far are kept."""


@dataclass
class FitResult:
    best: dict[str, float]  # validation metrics of the best epoch ({} without a validation split)
    best_epoch: int
    epochs: int  # epochs run
    steps: int
    seconds: float
    samples_per_s: float  # training rows per second, all ranks, loop time only
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    audit: list[dict[str, int]] = field(default_factory=list)  # per epoch: rows seen, checksum
    resumed_from: int | None = None  # the step of the checkpoint this run continued


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Plain CPU tensors of every parameter, sharded tables gathered whole (collective: call on all ranks)."""
    with warnings.catch_warnings():
        # TorchRec 1.8 still hands out ShardedTensor while torch warns it will give way to DTensor
        warnings.simplefilter("ignore", FutureWarning)
        state = model.state_dict()
        return {key: _whole(value) for key, value in state.items()}


def _whole(value: Any) -> torch.Tensor:
    if isinstance(value, ShardedTensor):
        shards = value.local_shards()
        if dist.get_world_size() == 1 and len(shards) == 1 and shards[0].tensor.shape == value.size():
            value = shards[0].tensor
        else:
            full = torch.empty(value.size(), dtype=value.dtype) if dist.get_rank() == 0 else None
            value.gather(dst=0, out=full)
            value = full if full is not None else torch.empty(0)
    elif hasattr(value, "full_tensor"):  # DTensor
        value = value.full_tensor()
    return value.detach().cpu().clone()


def _all_finite(loss: torch.Tensor, world: World) -> bool:
    """Whether the loss is finite on every rank (ranks must agree to stop together)."""
    if world.world_size == 1:
        return math.isfinite(loss.item())
    bad = torch.tensor([0.0 if math.isfinite(loss.item()) else 1.0])
    dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return bad.item() == 0


def _shown(loss: torch.Tensor) -> str:
    value = loss.item()
    return str(value) if not math.isfinite(value) else "nan or inf on another rank"


def _save(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def _improved(value: float, best: float | None, metric: str) -> bool:
    if best is None:
        return True
    return value < best if metric.endswith(LOWER_IS_BETTER) else value > best


@dataclass
class _Progress:
    """What the loop has done so far (saved with every checkpoint; the same on every rank)."""

    step: int = 0
    rows: int = 0
    seconds: float = 0.0  # in training steps only
    best_value: float | None = None
    best: dict[str, float] = field(default_factory=dict)
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch: int = 1  # the epoch in progress, or the next one
    epoch_rows: int = 0  # of the epoch in progress: real rows seen, all ranks, up to the last sync
    epoch_checksum: int = 0
    epoch_seconds: float = 0.0
    epoch_throughput_rows: int = 0  # real rows of the epoch in progress, all ranks (ours x ranks), for samples/s
    running: float | None = None  # smoothed training loss
    audit: list[dict[str, int]] = field(default_factory=list)
    stopped_early: bool = False


_MULTIPLIERS = torch.tensor([pow(1_000_003, i + 1, 2**61) for i in range(64)], dtype=torch.int64)


def _audit(batch: Any, single_hot: int) -> torch.Tensor:
    """int64 (real rows, checksum): the checksum sums a hash of each real row's single-hot ids and
    first label, wrapping around in int64, so it does not depend on the order rows came in."""
    real = (batch.weights > 0).long()
    n = len(real)
    hashed = (batch.labels[:, 0] * 1000).round().long() * 31
    if single_hot:
        ids = batch.sparse.values()[: single_hot * n].view(single_hot, n)
        hashed = hashed + (ids * _MULTIPLIERS[:single_hot, None].to(ids.device) % (2**61)).sum(0)
    return torch.stack([real.sum(), (hashed * real).sum()]).cpu()


class _Loop:
    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        objective: Any,
        config: RunConfig,
        world: World,
        checkpoints: Path,
        metric: str,
        has_val: bool,
        show: bool,
        log: Callable[[dict[str, float], int], None],
    ):
        self.model, self.optimizer, self.objective = model, optimizer, objective
        self.config = config
        self.cfg, self.world, self.checkpoints, self.metric = config.train, world, checkpoints, metric
        self.has_val, self.show, self.log = has_val, show, log
        self.progress = _Progress()
        self._unsynced = torch.zeros(2, dtype=torch.int64)  # audit of this rank since the last sync

    def done(self) -> bool:
        return bool(self.cfg.max_steps) and self.progress.step >= self.cfg.max_steps

    def train_epoch(self, loader: StreamingBatchLoader, epoch: int) -> None:
        """The rest of one pass over the training split (all of it unless resuming mid-epoch)."""
        p, cfg = self.progress, self.cfg
        self.model.train()
        single_hot = len(loader.manifest.single_hot)
        done_before = sum(loader.state_dict()["consumed"])  # > 0 when resuming mid-epoch
        bar = tqdm(
            total=len(loader),
            initial=done_before,
            desc=f"epoch {epoch}/{cfg.epochs}",
            disable=not self.show,
            leave=False,
            unit="step",
            dynamic_ncols=True,
        )
        start = time.perf_counter()
        for batch in loader:
            losses = self.step(batch.to(self.world.device), epoch)
            self._unsynced += _audit(batch, single_hot)
            p.epoch_throughput_rows += int(batch.weights.sum().item()) * self.world.world_size
            value = losses["loss"].item()
            p.running = value if p.running is None else 0.9 * p.running + 0.1 * value
            elapsed = p.epoch_seconds + time.perf_counter() - start
            bar.set_postfix(
                loss=f"{p.running:.4f}", samples_per_s=f"{p.epoch_throughput_rows / max(elapsed, 1e-9):,.0f}"
            )
            bar.update()
            if p.step % cfg.log_every == 0:
                # the smoothed loss: single-step losses of small batches are mostly noise
                point = {
                    "train_loss": p.running,
                    **{f"train_{k}_loss": v.item() for k, v in losses.items() if k != "loss"},
                }
                p.history.append({"step": p.step, "epoch": epoch - 1 + bar.n / max(1, len(loader)), **point})
                self.log(point, p.step)
            if cfg.checkpoint_every and p.step % cfg.checkpoint_every == 0:
                p.epoch_seconds += time.perf_counter() - start
                self.checkpoint(loader)
                start = time.perf_counter()  # samples/s counts training steps, not checkpoint writes
            if self.done():
                break
        bar.close()
        p.epoch_seconds += time.perf_counter() - start

    def _sync_audit(self) -> None:
        total = self._unsynced.clone()
        if self.world.world_size > 1:
            dist.all_reduce(total)
        self.progress.epoch_rows += int(total[0])
        self.progress.epoch_checksum = (self.progress.epoch_checksum + int(total[1]) + 2**63) % 2**64 - 2**63
        self._unsynced.zero_()

    def checkpoint(self, loader: StreamingBatchLoader) -> None:
        """A resumable checkpoint of this moment (collective)."""
        self._sync_audit()
        state = getattr(self.objective, "state_dict", lambda: {})()
        trainer = {
            "step": self.progress.step,
            "progress": asdict(self.progress),
            "loader": loader.state_dict(),
            "config": self.config.to_dict(),
        }
        save_checkpoint(
            self.checkpoints,
            self.model,
            self.optimizer,
            trainer,
            self.world,
            keep=self.cfg.keep_checkpoints,
            objective_state=state,
        )

    def restore(self, path: Path, loader: StreamingBatchLoader) -> int:
        """Continue from the checkpoint at ``path``; returns its step."""
        trainer = load_checkpoint(path, self.model, self.optimizer, self.world)
        self.progress = _Progress(**trainer["progress"])
        if trainer["objective"] and hasattr(self.objective, "load_state_dict"):
            self.objective.load_state_dict(trainer["objective"])
        loader.load_state_dict(trainer["loader"])
        return int(trainer["step"])

    def step(self, batch: Any, epoch: int) -> dict[str, torch.Tensor]:
        losses = self.objective.loss(self.model, batch)
        loss = losses["loss"]
        if not _all_finite(loss, self.world):
            raise TrainingError(
                f"the training loss became {_shown(loss)} at epoch {epoch}, step {self.progress.step + 1}; "
                f"stopped. The last good checkpoint is {self._last_good()}; try a lower learning rate "
                f"(train.dense_optimizer.lr, train.embedding_optimizer.lr)"
            )
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.progress.step += 1
        return losses

    def _last_good(self) -> str:
        found = latest_checkpoint(self.checkpoints)
        return f"{found} (resume with --resume)" if found else "none (no checkpoint was written yet)"

    def end_epoch(self, epoch: int, loader: StreamingBatchLoader) -> None:
        """Audit, validate, keep the best, checkpoint. An epoch cut short by ``max_steps`` is
        validated too (the run ends there) but stays the epoch in progress for a later resumption."""
        p = self.progress
        self._sync_audit()
        complete = loader.epoch >= epoch  # the loader counts finished epochs from 0
        rows, seconds, loss = p.epoch_throughput_rows, p.epoch_seconds, p.running
        p.rows += rows
        p.seconds += seconds
        p.epoch_seconds, p.epoch_throughput_rows = 0.0, 0
        if complete:
            p.audit.append({"epoch": epoch, "rows": p.epoch_rows, "checksum": p.epoch_checksum})
            p.epoch, p.epoch_rows, p.epoch_checksum = epoch + 1, 0, 0
        state = full_state_dict(self.model)
        val: dict[str, float] = {}
        if self.has_val:
            self.model.eval()
            # validation leaves the training RNG as it was: a run stopped here and resumed goes on
            # exactly as one that never stopped
            with torch.random.fork_rng(devices=[self.world.device] if self.world.device.type == "cuda" else []):
                val = self.objective.evaluate(self.model, "val", self.world.device)
            p.history.append({"epoch": epoch, "split": "val", **val})
            self.log({f"val_{k}": v for k, v in val.items()}, p.step)
        # without a validation split the latest epoch is the best we know
        improved = not self.has_val or _improved(val[self.metric], p.best_value, self.metric)
        if improved:
            p.best_value, p.best, p.best_epoch, p.bad_epochs = val.get(self.metric), val, epoch, 0
            if self.world.is_main:
                _save(self.checkpoints / "best.pt", {"state_dict": state, "epoch": epoch, "step": p.step})
        elif complete:
            p.bad_epochs += 1
        p.stopped_early = (
            self.has_val and bool(self.cfg.early_stopping_patience) and p.bad_epochs >= self.cfg.early_stopping_patience
        )
        self.checkpoint(loader)
        if self.show:
            shown = "".join(f", val_{k} {v:.4f}" for k, v in val.items())
            tqdm.write(
                f"epoch {epoch}{'' if complete else ' (cut short by train.max_steps)'}: loss "
                f"{loss if loss is not None else float('nan'):.4f}, {rows / max(seconds, 1e-9):,.0f} "
                f"samples/s{shown}" + (" *" if improved and self.has_val else "")
            )


def rows_per_batch(batch_size: int, manifest: Manifest) -> int:
    """``train.batch_size``, rounded down to whole candidate lists for list data (at least one)."""
    group = int(manifest.extra.get("list_rows", 1))
    return max(group, batch_size - batch_size % group)


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    objective: Any,
    config: RunConfig,
    data: str,
    manifest: Manifest,
    world: World,
    checkpoints: Path,
    metric: str,
    *,
    has_val: bool,
    quiet: bool = False,
    log: Callable[[dict[str, float], int], None] = lambda metrics, step: None,
    resume: Path | None = None,
) -> FitResult:
    """Train ``model`` (DMP-wrapped) until ``config.train.epochs`` or early stopping.

    Writes ``checkpoints/best.pt`` (weights of the best validation epoch; the last epoch without a
    validation split) and resumable checkpoints (see checkpoint.py). ``resume``: a checkpoint to
    continue from, written by any number of processes.
    """
    cfg = config.train
    checkpoints.mkdir(parents=True, exist_ok=True)
    loop = _Loop(
        model, optimizer, objective, config, world, checkpoints, metric, has_val, world.is_main and not quiet, log
    )
    loader = StreamingBatchLoader(
        data,
        "train",
        batch_size=rows_per_batch(cfg.batch_size, manifest),
        shuffle=True,
        seed=cfg.seed,
        num_workers=cfg.num_workers,
        window_blocks=cfg.window_blocks,
        manifest=manifest,
    )
    resumed_from = None
    try:
        if resume is not None:
            resumed_from = loop.restore(resume, loader)
            if loop.show:
                tqdm.write(f"resumed from {resume} (step {resumed_from}, epoch {loop.progress.epoch})")
        p = loop.progress
        while p.epoch <= cfg.epochs and not p.stopped_early and not loop.done():
            epoch = p.epoch
            loop.train_epoch(loader, epoch)
            loop.end_epoch(epoch, loader)  # also when max_steps stopped it mid-epoch
    finally:
        loader.close()
    if world.world_size > 1:
        dist.barrier()  # all ranks closed the loader before any opens another dataset
    p = loop.progress
    return FitResult(
        p.best,
        p.best_epoch,
        len(p.audit),
        p.step,
        p.seconds,
        p.rows / max(p.seconds, 1e-9),
        p.history,
        p.stopped_early,
        p.audit,
        resumed_from,
    )
