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

LOWER_IS_BETTER = ("loss", "log_loss", "rmse", "mae")


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


def _save(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def _improved(value: float, best: float | None, metric: str) -> bool:
    if best is None:
        return True
    return value < best if metric in LOWER_IS_BETTER else value > best


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, objective: Any, config: RunConfig, data: str,
        world: World, checkpoints: Path, metric: str, *, has_val: bool, quiet: bool = False,
        log: Callable[[dict[str, float], int], None] = lambda metrics, step: None) -> FitResult:
    """Train ``model`` (DMP-wrapped) until ``config.train.epochs`` or early stopping.

    Writes ``checkpoints/best.pt`` (weights of the best validation epoch; the last epoch without a
    validation split) and ``checkpoints/last.pt`` (the last finished epoch).
    """
    cfg = config.train
    checkpoints.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, Any]] = []
    best_value: float | None = None
    best: dict[str, float] = {}
    best_epoch, bad_epochs, step, rows, loop_seconds = 0, 0, 0, 0, 0.0
    stopped_early = False
    loader = StreamingBatchLoader(data, "train", batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed,
                                  num_workers=cfg.num_workers)
    show = world.is_main and not quiet
    epoch = 0
    try:
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            bar = tqdm(total=len(loader), desc=f"epoch {epoch}/{cfg.epochs}", disable=not show, leave=False,
                       unit="step", dynamic_ncols=True)
            start, epoch_rows, running = time.perf_counter(), 0, None
            for batch in loader:
                batch = batch.to(world.device)
                losses = objective.loss(model, batch)
                loss = losses["loss"]
                if not math.isfinite(loss.item()):
                    raise TrainingError(
                        f"the training loss became {loss.item()} at epoch {epoch}, step {step + 1}; stopped. "
                        f"The last good weights are in {checkpoints}/last.pt (epoch {epoch - 1}); try a lower "
                        f"learning rate (train.dense_optimizer.lr, train.embedding_optimizer.lr)")
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
                n = int(batch.weights.sum().item()) * world.world_size
                epoch_rows += n
                running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
                elapsed = time.perf_counter() - start
                bar.set_postfix(loss=f"{running:.4f}", samples_per_s=f"{epoch_rows / max(elapsed, 1e-9):,.0f}")
                bar.update()
                if step % cfg.log_every == 0:
                    # the smoothed loss: single-step losses of small batches are mostly noise
                    point = {"train_loss": running, **{f"train_{k}_loss": v.item() for k, v in losses.items()
                                                       if k != "loss"}}
                    history.append({"step": step, "epoch": epoch - 1 + bar.n / max(1, len(loader)), **point})
                    log(point, step)
                if cfg.max_steps and step >= cfg.max_steps:
                    break
            bar.close()
            loop_seconds += time.perf_counter() - start
            rows += epoch_rows
            state = full_state_dict(model)
            if world.is_main:
                _save(checkpoints / "last.pt", {"state_dict": state, "epoch": epoch, "step": step})
            summary = {"epoch": epoch, "train_loss": running or float("nan"),
                       "samples_per_s": epoch_rows / max(time.perf_counter() - start, 1e-9)}
            if has_val:
                model.eval()
                val = objective.evaluate(model, "val", world.device)
                summary.update({f"val_{k}": v for k, v in val.items()})
                history.append({"epoch": epoch, "split": "val", **val})
                log({f"val_{k}": v for k, v in val.items()}, step)
                improved = _improved(val[metric], best_value, metric)
            else:
                improved = True  # no validation split: the latest epoch is the best we know
            if improved:
                best_value = summary.get(f"val_{metric}")
                best, best_epoch, bad_epochs = (val if has_val else {}), epoch, 0
                if world.is_main:
                    _save(checkpoints / "best.pt", {"state_dict": state, "epoch": epoch, "step": step})
            else:
                bad_epochs += 1
            if show:
                shown = ", ".join(f"{k} {v:.4f}" for k, v in summary.items() if k.startswith("val_"))
                tqdm.write(f"epoch {epoch}: loss {summary['train_loss']:.4f}, "
                           f"{summary['samples_per_s']:,.0f} samples/s" + (f", {shown}" if shown else "")
                           + (" *" if improved and has_val else ""))
            if cfg.max_steps and step >= cfg.max_steps:
                break
            if has_val and cfg.early_stopping_patience and bad_epochs >= cfg.early_stopping_patience:
                stopped_early = True
                break
    finally:
        loader.close()
    return FitResult(best, best_epoch, epoch, step, loop_seconds, rows / max(loop_seconds, 1e-9), history,
                     stopped_early)
