"""Resumable checkpoints: model, optimizers, loader position, step, RNG and config, written by every
rank together and loadable by any number of ranks.

    RUN_DIR/checkpoints/
        step-000001200/          one checkpoint (torch.distributed.checkpoint format)
            .metadata            the global layout of every tensor
            __0_0.distcp ...     each rank's shards: weights, fused embedding optimizer state, Adam state
            trainer.pt           step, epoch, loader state, per-rank RNG, objective state, config, progress
        latest                   name of the newest complete checkpoint
        best.pt                  weights of the best validation epoch, unsharded (for the final model)

A checkpoint is written into a hidden temporary folder and renamed when every rank has finished,
then ``latest`` is replaced atomically: a run killed while writing leaves the previous checkpoint
as ``latest``. Because DCP stores tensors by their global position, a checkpoint written by N
ranks loads on M: each rank reads the pieces of its own shards, whatever sharding wrote them.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torchrec.optim.keyed import KeyedOptimizerWrapper

from recfunnel.errors import RecfunnelError
from recfunnel.train.distributed import World

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "latest_checkpoint", "TRAINER"]

LATEST = "latest"
TRAINER = "trainer.pt"
PREFIX = "step-"


class CheckpointError(RecfunnelError):
    """No usable checkpoint, or one that does not fit this run."""


@contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        # TorchRec 1.8 hands out ShardedTensor, which torch says will give way to DTensor
        warnings.simplefilter("ignore", FutureWarning)
        yield


def _rng_state(world: World) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if world.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(world.device)
    return state


def _gather(obj: Any, world: World) -> list[Any]:
    if world.world_size == 1:
        return [obj]
    out: list[Any] = [None] * world.world_size
    dist.all_gather_object(out, obj)
    return out


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint in ``folder`` (None when there is none)."""
    pointer = Path(folder) / LATEST
    if not pointer.exists():
        return None
    path = Path(folder) / pointer.read_text().strip()
    return path if (path / TRAINER).exists() else None


def save_checkpoint(
    folder: Path,
    model: nn.Module,
    optimizer: Any,
    trainer: dict[str, Any],
    world: World,
    keep: int = 2,
    objective_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint of step ``trainer["step"]`` (collective: every rank calls it); keeps the
    newest ``keep`` checkpoints. ``trainer`` must be the same on every rank, except that per-rank
    RNG and objective states are gathered here."""
    folder = Path(folder)
    name = f"{PREFIX}{int(trainer['step']):09d}"
    tmp, final = folder / f".{name}.tmp", folder / name
    if world.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    with _quiet():
        dcp.save({"model": model.state_dict(), "optim": optimizer.state_dict()}, checkpoint_id=str(tmp))
    ranks = _gather({"rng": _rng_state(world), "objective": objective_state or {}}, world)
    if world.is_main:
        torch.save({**trainer, "world_size": world.world_size, "ranks": ranks}, tmp / TRAINER)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        pointer = folder / f".{LATEST}.tmp"
        pointer.write_text(name + "\n")
        pointer.replace(folder / LATEST)
        old = sorted(p for p in folder.glob(f"{PREFIX}*") if p.is_dir() and p != final)
        for path in old[: max(0, len(old) - (keep - 1))]:
            shutil.rmtree(path, ignore_errors=True)
    dist.barrier()
    return final


def load_checkpoint(path: Path, model: nn.Module, optimizer: Any, world: World) -> dict[str, Any]:
    """Load ``path`` into ``model`` and ``optimizer`` (collective; any world size), restore this
    rank's RNG, and return the trainer state with ``objective`` set to this rank's objective state
    (rank 0's when the world size changed)."""
    path = Path(path)
    try:
        trainer = torch.load(path / TRAINER, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as e:
        raise CheckpointError(f"{path / TRAINER}: cannot read ({e})") from None
    with _quiet():
        # Adam's state exists only after a first step: create it so DCP has places to load into. (Not
        # for the fused embedding optimizer: its state is eager, and init_state would allocate a
        # zero gradient as big as every table.)
        for _, part in optimizer.optimizers:
            if isinstance(part, KeyedOptimizerWrapper):
                part.init_state()
        state = {"model": model.state_dict(), "optim": optimizer.state_dict()}
        try:
            dcp.load(state, checkpoint_id=str(path))
        except (CheckpointException, RuntimeError, ValueError, KeyError) as e:
            # DCP wraps each rank's error with its traceback: the last line says what did not fit
            lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
            why = lines[-1][:300] if lines else type(e).__name__
            raise CheckpointError(f"{path}: does not fit this model and sharding ({why})") from None
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optim"])
    same_world = trainer["world_size"] == world.world_size
    mine = trainer["ranks"][world.rank if same_world else 0]
    if same_world:
        torch.set_rng_state(mine["rng"]["torch"])
        if world.device.type == "cuda" and "cuda" in mine["rng"]:
            torch.cuda.set_rng_state(mine["rng"]["cuda"], world.device)
    else:  # another world: a fresh stream per rank, still reproducible
        torch.manual_seed(int(trainer["step"]) * 1009 + world.rank)
    trainer["objective"] = mine["objective"]
    return trainer
