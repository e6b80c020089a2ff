"""Starting ``recfunnel train`` on several processes with Spark's TorchDistributor.

    run_spark({"model_kind": "dlrm", "data": data, "out": run}, num_processes=2)  # -> 0

``local_mode=False``: each rank is a Spark barrier task, on the cluster's executors (or on this
machine's cores with a ``local[N]`` master); ``local_mode=True``: every rank runs on the driver.
Either way each rank runs :func:`recfunnel.train.run.train` with the same arguments and reads its
world from the environment, as under torchrun, because TorchDistributor starts every rank with torchrun:

- local_mode=True: one ``torchrun --standalone --nnodes=1 --nproc_per_node=N`` on the driver;
  its output is copied to the driver's stdout as it comes.
- local_mode=False: each task sets ``MASTER_ADDR``/``MASTER_PORT`` (task 0's host, a free port),
  ``WORLD_SIZE``, ``RANK``/``NODE_RANK`` (the task's partition) and ``CUDA_VISIBLE_DEVICES``
  (its GPUs, or "" without), then runs ``torchrun --nnodes=<tasks> --node_rank=<partition>
  --nproc_per_node=<its GPUs, or 1>``. torchrun then sets ``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE`` as usual, but only knows its own task: every rank is
  local rank 0 of a "node" of 1, even when all tasks share one host (see :func:`_one_host`).
  The ranks' output goes to the driver's stderr through Spark's log streaming, line by line.

Spark's Python workers must import recfunnel: ``PYSPARK_PYTHON`` is this interpreter in a local
session; on a cluster, install recfunnel on every worker.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sys
from typing import Any

from recfunnel.compat.tqdm import close_progress_bars
from recfunnel.errors import RecfunnelError
from recfunnel.spark import spark_session

__all__ = ["run_spark"]


def run_spark(
    train_args: dict[str, Any],
    num_processes: int,
    master: str | None = None,
    local_mode: bool = False,
    use_gpu: bool | None = None,
) -> int:
    """Run ``train(**train_args)`` (:func:`recfunnel.train.run.train`) on ``num_processes`` ranks
    with TorchDistributor; returns the exit code every rank agreed on (0: success; 2: a user
    mistake, already printed in one line by the failing rank).

    master: a Spark master URL; default the active Spark session (Databricks' ``spark``), else a
    new ``local[num_processes]`` one. A session made here is stopped at the end.
    use_gpu: default ``torch.cuda.is_available()``; the Spark session must give GPUs to tasks
    (``spark.task.resource.gpu.amount``) or, with local_mode, to the driver.
    """
    if num_processes < 1:
        raise RecfunnelError(f"--num-processes: expected an integer >= 1, got {num_processes}")
    import torch
    from pyspark.ml.torch.distributor import TorchDistributor

    use_gpu = torch.cuda.is_available() if use_gpu is None else use_gpu
    spark, made_here = _session(master, num_processes)
    try:
        if not local_mode:
            _check_slots(spark, num_processes)
        if use_gpu:
            _check_gpus(spark, local_mode)
        distributor = TorchDistributor(num_processes=num_processes, local_mode=local_mode, use_gpu=use_gpu)
        distributor.logger.setLevel(logging.WARNING)  # not its "Started/Finished training" lines
        return distributor.run(_rank_main, train_args)
    finally:
        if made_here:
            spark.stop()


def _session(master: str | None, num_processes: int) -> tuple[Any, bool]:
    """The active session if it fits ``master``, else a new one; and whether it was made here."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        current = active.conf.get("spark.master", "")
        if master is None or master == current:
            return active, False
        raise RecfunnelError(
            f"--spark-master {master}: this process already has a Spark session on {current}; "
            "leave --spark-master out to use it"
        )
    spark = spark_session(master or f"local[{num_processes}]", app="recfunnel-train")
    spark.sparkContext.setLogLevel("ERROR")  # the user wants training output, not Spark's
    return spark, True


def _check_slots(spark: Any, num_processes: int) -> None:
    """A barrier stage needs a task slot per rank at once; short of them, Spark retries for
    ~10 minutes before failing. Only a local master's slots are known here."""
    match = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\d+)?\])?", spark.conf.get("spark.master", ""))
    if match is None:
        return
    cores = (os.cpu_count() or 1) if match.group(1) == "*" else int(match.group(1) or 1)
    task_cpus = int(spark.conf.get("spark.task.cpus", "1"))
    if num_processes > cores // task_cpus:
        raise RecfunnelError(
            f"--num-processes {num_processes}: Spark master {match.group(0)} runs "
            f"{cores // task_cpus} task(s) at once ({cores} core(s), spark.task.cpus={task_cpus}); "
            "each process needs one"
        )


def _check_gpus(spark: Any, local_mode: bool) -> None:
    key = "spark.driver.resource.gpu.amount" if local_mode else "spark.task.resource.gpu.amount"
    if int(spark.conf.get(key, "0") or 0) < 1:
        raise RecfunnelError(
            f"training on GPUs through Spark needs {key} >= 1 in the Spark configuration "
            "(GPU clusters set it); set it, or train on CPU"
        )


def _rank_main(train_args: dict[str, Any]) -> int:
    """One rank: ``train(**train_args)``; returns the exit code all ranks agreed on.

    TorchDistributor returns the value of the file its ranks write (local_mode=True: whichever rank
    wrote last; local_mode=False: task 0's), so every rank returns the same, agreed code.
    """
    sys.stdout.reconfigure(line_buffering=True)  # TorchDistributor reads a pipe: show lines as they come
    _one_host()
    # imported only now: nothing may read LOCAL_RANK or touch CUDA before _one_host has set them
    import torch.distributed as dist

    from recfunnel.train.distributed import init_world

    init_world()  # the group that training reuses, and that agrees on the exit code below
    code, message = _train(train_args)
    results: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(results, (code, message))
    failed = [(rank, c, m) for rank, (c, m) in enumerate(results) if c]
    if failed and failed[0][0] == dist.get_rank():  # the first failing rank says why, once
        print(f"recfunnel: error: {message}", file=sys.stderr, flush=True)
    dist.destroy_process_group()
    return failed[0][1] if failed else 0


def _train(train_args: dict[str, Any]) -> tuple[int, str]:
    """0, or 2 and the message of a user mistake (which the CLI would print in one line)."""
    from recfunnel.train.run import train  # after _one_host, as above

    try:
        train(**train_args)
        return 0, ""
    except RecfunnelError as err:
        close_progress_bars()
        return 2, str(err)


def _one_host() -> None:
    """Make the environment tell the truth about ranks that share this host.

    Under local_mode=False each Spark task runs its own torchrun, so every rank reads LOCAL_RANK=0
    and LOCAL_WORLD_SIZE=1 even when all tasks run on one machine (Spark local[N], or a cluster
    whose executor runs several tasks): Mosaic streaming's ranks then collide on their shared
    memory (``FileExistsError: .../000000_locals``) and the sharding planner counts a host per
    rank. When the ranks' hostnames are all equal, set LOCAL_RANK=RANK and
    LOCAL_WORLD_SIZE=WORLD_SIZE before anything reads them.

    The hostnames are exchanged through torchrun's rendezvous store, not a process group: making
    the group (``init_world``) picks the GPU cuda:LOCAL_RANK, and CUDA must not start before both
    LOCAL_RANK and CUDA_VISIBLE_DEVICES are right. Each Spark task sees only its own GPU(s), so
    the ranks' physical GPUs are also gathered and, when distinct, made CUDA_VISIBLE_DEVICES in
    rank order: cuda:RANK is then this rank's own GPU.
    """
    world = int(os.environ.get("WORLD_SIZE", 1))
    if int(os.environ.get("LOCAL_WORLD_SIZE", world)) == world:
        return  # one torchrun holds every rank (local_mode=True): already right
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    gpu = visible[local_rank] if local_rank < len(visible) else ""
    peers = [json.loads(p) for p in _exchange(json.dumps([socket.gethostname(), gpu]))]
    if len({host for host, _ in peers}) > 1:
        return
    os.environ["LOCAL_RANK"], os.environ["LOCAL_WORLD_SIZE"] = os.environ["RANK"], str(world)
    gpus = [g for _, g in peers]
    if all(gpus) and len(set(gpus)) == world:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)


def _exchange(value: str) -> list[str]:
    """Every rank's ``value``, in rank order, through the torchrun agent's store (env://)."""
    import torch.distributed as dist

    store, rank, world = next(dist.rendezvous("env://"))
    keys = [f"recfunnel/one_host/{r}" for r in range(world)]
    store.set(keys[rank], value)
    store.wait(keys)
    values = [store.get(k).decode() for k in keys]
    # without a torchrun agent, rank 0's process hosts the store: it must outlive every read
    store.set(f"recfunnel/one_host_read/{rank}", "1")
    if rank == 0:
        store.wait([f"recfunnel/one_host_read/{r}" for r in range(world)])
    return values
