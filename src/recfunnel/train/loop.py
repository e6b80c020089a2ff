"""The training loop: epochs over the streaming loader, validation every epoch, early stopping on a
chosen metric, the best weights kept on disk, a NaN loss stopping the run with the last good
checkpoint intact.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.types import ShardedTensor
from tqdm import tqdm

from recfunnel.config import RunConfig
from recfunnel.data.loader import StreamingBatchLoader
from recfunnel.errors import RecfunnelError
from recfunnel.train.distributed import World

__all__ = ["TrainingError", "FitResult", "fit", "full_state_dict", "LOWER_IS_BETTER"]

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
    """What the loop has done so far."""

    step: int = 0
    rows: int = 0
    seconds: float = 0.0  # in training steps only
    best_value: float | None = None
    best: dict[str, float] = field(default_factory=dict)
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


class _Loop:
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, objective: Any, config: RunConfig,
                 world: World, checkpoints: Path, metric: str, has_val: bool, show: bool,
                 log: Callable[[dict[str, float], int], None]):
        self.model, self.optimizer, self.objective = model, optimizer, objective
        self.cfg, self.world, self.checkpoints, self.metric = config.train, world, checkpoints, metric
        self.has_val, self.show, self.log = has_val, show, log
        self.progress = _Progress()

    def done(self) -> bool:
        return bool(self.cfg.max_steps) and self.progress.step >= self.cfg.max_steps

    def train_epoch(self, loader: StreamingBatchLoader, epoch: int) -> tuple[int, float]:
        """One pass over the training split: (rows, smoothed loss)."""
        p, cfg = self.progress, self.cfg
        self.model.train()
        bar = tqdm(total=len(loader), desc=f"epoch {epoch}/{cfg.epochs}", disable=not self.show, leave=False,
                   unit="step", dynamic_ncols=True)
        start, rows, running = time.perf_counter(), 0, None
        for batch in loader:
            losses = self.step(batch.to(self.world.device), epoch)
            rows += int(batch.weights.sum().item()) * self.world.world_size
            value = losses["loss"].item()
            running = value if running is None else 0.9 * running + 0.1 * value
            bar.set_postfix(loss=f"{running:.4f}",
                            samples_per_s=f"{rows / max(time.perf_counter() - start, 1e-9):,.0f}")
            bar.update()
            if p.step % cfg.log_every == 0:
                # the smoothed loss: single-step losses of small batches are mostly noise
                point = {"train_loss": running, **{f"train_{k}_loss": v.item() for k, v in losses.items()
                                                   if k != "loss"}}
                p.history.append({"step": p.step, "epoch": epoch - 1 + bar.n / max(1, len(loader)), **point})
                self.log(point, p.step)
            if self.done():
                break
        bar.close()
        p.seconds += time.perf_counter() - start
        p.rows += rows
        return rows, running if running is not None else float("nan")

    def step(self, batch: Any, epoch: int) -> dict[str, torch.Tensor]:
        losses = self.objective.loss(self.model, batch)
        loss = losses["loss"]
        if not _all_finite(loss, self.world):
            raise TrainingError(
                f"the training loss became {_shown(loss)} at epoch {epoch}, step {self.progress.step + 1}; "
                f"stopped. The last good weights are in {self.checkpoints}/last.pt (epoch {epoch - 1}); try a "
                f"lower learning rate (train.dense_optimizer.lr, train.embedding_optimizer.lr)")
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.progress.step += 1
        return losses

    def end_epoch(self, epoch: int, rows: int, seconds: float, loss: float) -> bool:
        """Checkpoint, validate, keep the best; True when early stopping says stop."""
        p = self.progress
        state = full_state_dict(self.model)
        if self.world.is_main:
            _save(self.checkpoints / "last.pt", {"state_dict": state, "epoch": epoch, "step": p.step})
        val: dict[str, float] = {}
        if self.has_val:
            self.model.eval()
            val = self.objective.evaluate(self.model, "val", self.world.device)
            p.history.append({"epoch": epoch, "split": "val", **val})
            self.log({f"val_{k}": v for k, v in val.items()}, p.step)
        # without a validation split the latest epoch is the best we know
        improved = not self.has_val or _improved(val[self.metric], p.best_value, self.metric)
        if improved:
            p.best_value, p.best, p.best_epoch, p.bad_epochs = val.get(self.metric), val, epoch, 0
            if self.world.is_main:
                _save(self.checkpoints / "best.pt", {"state_dict": state, "epoch": epoch, "step": p.step})
        else:
            p.bad_epochs += 1
        if self.show:
            shown = "".join(f", val_{k} {v:.4f}" for k, v in val.items())
            tqdm.write(f"epoch {epoch}: loss {loss:.4f}, {rows / max(seconds, 1e-9):,.0f} samples/s{shown}"
                       + (" *" if improved and self.has_val else ""))
        return self.has_val and bool(self.cfg.early_stopping_patience) and \
            p.bad_epochs >= self.cfg.early_stopping_patience


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, objective: Any, config: RunConfig, data: str,
        world: World, checkpoints: Path, metric: str, *, has_val: bool, quiet: bool = False,
        log: Callable[[dict[str, float], int], None] = lambda metrics, step: None) -> FitResult:
    """Train ``model`` (DMP-wrapped) until ``config.train.epochs`` or early stopping.

    Writes ``checkpoints/best.pt`` (weights of the best validation epoch; the last epoch without a
    validation split) and ``checkpoints/last.pt`` (the last finished epoch).
    """
    cfg = config.train
    checkpoints.mkdir(parents=True, exist_ok=True)
    loop = _Loop(model, optimizer, objective, config, world, checkpoints, metric, has_val,
                 world.is_main and not quiet, log)
    loader = StreamingBatchLoader(data, "train", batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed,
                                  num_workers=cfg.num_workers)
    epoch, stopped_early = 0, False
    try:
        for epoch in range(1, cfg.epochs + 1):
            start = time.perf_counter()
            rows, loss = loop.train_epoch(loader, epoch)
            stopped_early = loop.end_epoch(epoch, rows, time.perf_counter() - start, loss)
            if stopped_early or loop.done():
                break
    finally:
        loader.close()
    if world.world_size > 1:
        dist.barrier()  # all ranks closed the loader before any opens another dataset
    p = loop.progress
    return FitResult(p.best, p.best_epoch, epoch, p.step, p.seconds, p.rows / max(p.seconds, 1e-9), p.history,
                     stopped_early)
