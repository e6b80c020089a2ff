"""Mosaic ``streaming`` (mosaicml-streaming 0.13): importing it without torchvision, and the private
parts of ``StreamingDataset`` that the block loader needs. Nothing else in recfunnel reaches past
streaming's public API; ``tests/compat`` checks that everything in ``PRIVATE_API`` still exists.

Why each private part:
- ``generate_work`` / ``World`` (``streaming.base``): the loader computes every rank's and worker's
  share of an epoch itself, to mark padding copies and to resume on another world size.
- ``_set_shuffle_block_size``: must run before ``generate_work``, as ``StreamingDataset.__iter__``
  runs it.
- ``_parallel_rank_world`` / ``_unique_rank_world`` (and their ``_worker_`` counterparts, which
  ``__iter__`` sets and ``__getitem__`` reads): the world the dataset detected.
- ``_locals_shm``, ``_shared_barrier``, ``_next_epoch``, ``_cache_usage``, ``_shard_states``,
  ``_shard_access_times``, ``_cache_filelock_path``: the shared memory and lock files a dataset
  makes, freed only when it is garbage-collected (see :func:`release_shared_memory`).
- ``CloudDownloader.direct_download``: one file (the manifest) from a remote dataset.
- ``spanner``, ``streams``, ``stream_per_shard``, ``shards`` (public, undocumented): which shard file
  holds a sample, to name it when its content is corrupt.
"""

from __future__ import annotations

import os
import sys
import types
from typing import Any

import numpy as np

__all__ = [
    "PRIVATE_API",
    "import_streaming",
    "StreamingDataset",
    "StreamingWorld",
    "epoch_work",
    "rank_world",
    "enter_worker",
    "release_shared_memory",
    "download_file",
    "shard_file",
    "missing",
]


def import_streaming() -> types.ModuleType:
    """Return the ``streaming`` package, importable with or without a working torchvision.

    ``streaming/__init__`` imports ``streaming.vision``, which imports torchvision. We do not install
    torchvision (PyPI's build is CUDA-only and breaks beside a CPU torch, failing with "operator
    torchvision::nms does not exist"), and recfunnel uses nothing from ``streaming.vision``. So on
    that failure we drop the half-imported modules, register an empty ``streaming.vision`` and
    import again.
    """
    try:
        import streaming
    except (ImportError, RuntimeError):
        for name in list(sys.modules):
            if name.split(".")[0] in ("torchvision", "streaming"):
                del sys.modules[name]
        sys.modules["streaming.vision"] = types.ModuleType("streaming.vision")
        import streaming
    return streaming


_streaming = import_streaming()
from streaming.base.batching import generate_work as _generate_work  # noqa: E402  (needs the import above first)
from streaming.base.storage import CloudDownloader as _CloudDownloader  # noqa: E402
from streaming.base.world import World as StreamingWorld  # noqa: E402

StreamingDataset = _streaming.StreamingDataset

# (where, attribute): what this module uses beyond streaming's public API. Dataset attributes are
# set by StreamingDataset.__init__, so checking them needs a dataset (see missing()).
PRIVATE_API: list[tuple[str, str]] = [
    ("streaming.base.batching", "generate_work"),
    ("streaming.base.world.World", "detect_workers"),
    ("streaming.base.storage.CloudDownloader", "direct_download"),
    ("StreamingDataset", "_set_shuffle_block_size"),
    ("StreamingDataset", "batching_method"),
    ("StreamingDataset", "_parallel_rank_world"),
    ("StreamingDataset", "_unique_rank_world"),
    ("StreamingDataset", "_locals_shm"),
    ("StreamingDataset", "_locals_shm.created_shms"),
    ("StreamingDataset", "_shared_barrier._arr.shm"),
    ("StreamingDataset", "_shared_barrier.filelock_path"),
    ("StreamingDataset", "_next_epoch.arr.shm"),
    ("StreamingDataset", "_cache_usage.arr.shm"),
    ("StreamingDataset", "_shard_states.shm"),
    ("StreamingDataset", "_shard_access_times.shm"),
    ("StreamingDataset", "_cache_filelock_path"),
    ("StreamingDataset", "spanner"),
    ("StreamingDataset", "streams"),
    ("StreamingDataset", "stream_per_shard"),
    ("StreamingDataset", "shards"),
]


def missing(dataset: Any) -> list[str]:
    """The entries of ``PRIVATE_API`` that this streaming version lacks (``dataset``: any open
    StreamingDataset), as ``"StreamingDataset._locals_shm"``; empty when all are there."""
    import streaming.base.batching as batching

    roots = {
        "streaming.base.batching": batching,
        "streaming.base.world.World": StreamingWorld,
        "streaming.base.storage.CloudDownloader": _CloudDownloader,
        "StreamingDataset": dataset,
    }
    out = []
    for where, path in PRIVATE_API:
        obj: Any = roots[where]
        for part in path.split("."):
            if not hasattr(obj, part):
                out.append(f"{where}.{path}")
                break
            obj = getattr(obj, part)
    return out


def epoch_work(dataset: Any, world: StreamingWorld, epoch: int) -> np.ndarray:
    """Sample ids of every (node, rank, worker, batch, slot) of ``epoch``, as StreamingDataset
    itself would partition them (-1 = none): int64 (nodes, ranks_per_node, workers, batches, batch)."""
    dataset._set_shuffle_block_size(world)
    return _generate_work(dataset.batching_method, dataset, world, epoch, 0)


def rank_world(dataset: Any) -> StreamingWorld:
    """The world ``dataset`` detected for this rank (nodes, ranks per node, this rank)."""
    return dataset._parallel_rank_world


def enter_worker(dataset: Any) -> StreamingWorld:
    """Inside a DataLoader worker (or the main process): record the worker world on ``dataset`` as
    ``StreamingDataset.__iter__`` does (its sample reads need it) and return it."""
    dataset._unique_worker_world = dataset._unique_rank_world.detect_workers()
    dataset._parallel_worker_world = world = dataset._parallel_rank_world.detect_workers()
    return world


def release_shared_memory(dataset: Any) -> None:
    """Release the shared memory and lock files a StreamingDataset made; idempotent.

    StreamingDataset only marks its local folder free when collected (and reference cycles
    delay that), leaving six shared-memory segments and two lock files per instance behind;
    a long test session or a job that builds many datasets runs out of file descriptors.
    The getattr guards make a dataset whose construction failed half-way safe to release.
    """
    if getattr(dataset, "_released", False):
        return
    dataset._released = True
    locals_shm = getattr(dataset, "_locals_shm", None)
    leader = bool(getattr(locals_shm, "created_shms", None))
    holders = [
        locals_shm,
        getattr(getattr(dataset, "_shared_barrier", None), "_arr", None),
        getattr(getattr(dataset, "_next_epoch", None), "arr", None),
        getattr(getattr(dataset, "_cache_usage", None), "arr", None),
        getattr(dataset, "_shard_states", None),
        getattr(dataset, "_shard_access_times", None),
    ]
    for holder in holders:
        shm = holder if hasattr(holder, "cleanup") else getattr(holder, "shm", None)
        if shm is not None and hasattr(shm, "cleanup"):
            shm.cleanup()
    if leader:
        for path in (
            getattr(getattr(dataset, "_shared_barrier", None), "filelock_path", None),
            getattr(dataset, "_cache_filelock_path", None),
        ):
            if path and os.path.exists(path):
                os.remove(path)


def download_file(remote: str, local: str, timeout: float = 60) -> None:
    """One file of a remote dataset (s3://, gs://, dbfs:/, ... or a local path) to ``local``."""
    _CloudDownloader.direct_download(remote, local, timeout)


def shard_file(dataset: Any, sample_id: int) -> str:
    """The path of the shard file that holds sample ``sample_id``, for error messages."""
    try:
        shard, _ = dataset.spanner[sample_id]
        stream = dataset.streams[dataset.stream_per_shard[shard]]
        return os.path.join(stream.local, stream.split, dataset.shards[shard].raw_data.basename)
    except Exception:  # never let naming the shard hide the error being reported
        return f"sample {sample_id}"
