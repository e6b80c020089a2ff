"""Batches for training: dense floats, a TorchRec KeyedJaggedTensor of sparse ids, labels, weights.

    loader = StreamingBatchLoader("data/ml-100k", "train", batch_size=8192, shuffle=True)
    for epoch in range(3):
        for batch in loader:              # Batch: dense (B, D), sparse KJT, labels (B, L), weights (B,)
            ...
        state = loader.state_dict()       # save with the checkpoint; load_state_dict() resumes
                                          # mid-epoch with no row repeated or skipped

Rank and world size come from the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``) as under torchrun, so the same code runs on one process or many.
``weights`` is 0 for rows that only pad ranks to equal length: weight losses and metrics by it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable

from recfunnel.compat.streaming import download_file, rank_world
from recfunnel.data.format.manifest import MANIFEST, Manifest, load_manifest
from recfunnel.data.format.shards import check_shards
from recfunnel.data.stream.dataset import BlockStreamDataset, Pending, remaining
from recfunnel.errors import DataError, RecfunnelError

__all__ = ["Batch", "StreamingBatchLoader", "open_manifest"]


@dataclass
class Batch(Pipelineable):
    dense: torch.Tensor  # float32 (B, D)
    sparse: KeyedJaggedTensor  # keys = manifest.sparse_keys, one id per row for single-hot features
    labels: torch.Tensor  # float32 (B, L), in manifest.labels order
    weights: torch.Tensor  # float32 (B,): 1 for real rows, 0 for padding

    def __len__(self) -> int:
        return self.labels.shape[0]

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        return Batch(
            self.dense.to(device, non_blocking=non_blocking),
            self.sparse.to(device, non_blocking=non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
            self.weights.to(device, non_blocking=non_blocking),
        )

    def record_stream(self, stream: Any) -> None:
        self.dense.record_stream(stream)
        self.sparse.record_stream(stream)
        self.labels.record_stream(stream)
        self.weights.record_stream(stream)

    def pin_memory(self) -> Batch:
        return Batch(self.dense.pin_memory(), self.sparse.pin(), self.labels.pin_memory(), self.weights.pin_memory())


def open_manifest(data: str, cache: str | None = None) -> tuple[Manifest, str, str | None]:
    """(manifest, local folder, remote or None) of a dataset.

    Without ``cache``, ``data`` is a local dataset folder. With ``cache``, ``data`` is a remote
    dataset (``s3://``, ``gs://``, ``dbfs:/``, ``oci://``, ... whatever Mosaic streaming downloads
    from, or another local folder) and ``cache`` the local folder its files are downloaded into.
    The manifest is always downloaded afresh; shards are downloaded by StreamingDataset as needed.
    """
    if cache is None:
        if "://" in data or data.startswith("dbfs:"):
            raise DataError(f"{data}: a remote dataset needs a local cache folder (cache=..., --cache DIR)")
        return load_manifest(data), data, None
    local = Path(cache) / MANIFEST
    local.parent.mkdir(parents=True, exist_ok=True)
    local.unlink(missing_ok=True)
    try:
        download_file(f"{data.rstrip('/')}/{MANIFEST}", str(local), 60)
    except (ValueError, FileNotFoundError, OSError) as e:
        raise DataError(f"{data}/{MANIFEST}: could not download ({e})") from None
    return load_manifest(cache), str(cache), data


class StreamingBatchLoader:
    """Shuffled, resumable batches of one split, for this process's rank.

    Args:
        data: dataset folder; or, with ``cache``, a remote dataset (s3://, gs://, dbfs:/, ...).
        split: ``train``, ``val`` or ``test``.
        batch_size: rows per batch for this rank.
        shuffle: shuffle blocks and rows (seeded by ``seed`` and the epoch); False keeps file order.
        num_workers: DataLoader worker processes (0 = decode in this process).
        window_blocks: blocks whose rows are shuffled together (memory: window_blocks * block_rows rows).
        drop_last: drop each worker's last partial batch (rows then are not all seen).
        cache: local folder for a remote ``data``.
        manifest: ``data``'s manifest when the caller holds it already (a local ``data`` only; a
            remote one's manifest is always downloaded afresh).
        validate: check the shard files against their index when opening, and each block's
            checksum and ids as it is read (a corrupt block raises ``CorruptDataError`` naming shard
            and block). False only to measure what checking costs (`recfunnel bench data`).
    """

    def __init__(
        self,
        data: str | Path,
        split: str,
        *,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        num_workers: int = 0,
        window_blocks: int = 8,
        drop_last: bool = False,
        cache: str | None = None,
        validate: bool = True,
        pin_memory: bool = False,
        manifest: Manifest | None = None,
    ):
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        if manifest is not None and cache is None:
            local, remote = str(data), None
        else:
            manifest, local, remote = open_manifest(str(data), cache)
        if split not in manifest.splits:
            raise DataError(f"{data}: no split {split!r}; the dataset has {sorted(manifest.splits)}")
        if validate and remote is None:
            check_shards(local, manifest, splits=[split])
        self.manifest = manifest
        self.split = split
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.seed = seed
        split_local = str(Path(local) / split)
        self.dataset = BlockStreamDataset(
            local=split_local,
            remote=f"{remote.rstrip('/')}/{split}" if remote else None,
            manifest=manifest,
            split=split,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            window_blocks=window_blocks,
            drop_last=drop_last,
            verify=validate,
        )
        self.epoch = 0
        self._consumed = [0] * max(1, num_workers)
        self._keys = manifest.sparse_keys

    def close(self) -> None:
        """Free the shared memory behind this loader (also done when it is garbage-collected)."""
        self.dataset.close()

    def __enter__(self) -> StreamingBatchLoader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if hasattr(self, "dataset"):
            self.dataset.close()

    def __len__(self) -> int:
        """Batches this rank gets per epoch (the same on every rank)."""
        return sum(self.dataset.batches_per_worker(self.num_workers, self.epoch))

    @property
    def rows(self) -> int:
        """Rows in the split (all ranks together)."""
        return self.manifest.splits[self.split].rows

    def __iter__(self) -> Iterator[Batch]:
        """The rest of the current epoch; when it is exhausted the next epoch begins."""
        self.dataset.set_epoch(self.epoch, self._consumed)
        # Its own generator: a DataLoader otherwise draws its base seed from torch's global RNG each
        # epoch, and a resumed run (which starts its iterator later) would see other dropout masks.
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        loader: DataLoader[dict[str, Any]] = DataLoader(
            self.dataset,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=False,
            generator=generator,
            multiprocessing_context="fork" if self.num_workers else None,
        )
        try:
            for item in loader:
                self._consumed[item["worker"]] += 1
                self.dataset.verified[item["verified"]] = True  # checked by a worker: not again this run
                yield self._batch(item)
        except RecfunnelError as err:
            raise _one_line(err) from None
        self.epoch += 1
        self._consumed = [0] * max(1, self.num_workers)
        self.dataset.pending = None

    def _batch(self, item: dict[str, Any]) -> Batch:
        n = item["labels"].shape[0]
        sparse = KeyedJaggedTensor(keys=self._keys, values=item["values"], lengths=item["lengths"], stride=n)
        return Batch(item["dense"], sparse, item["labels"], item["weights"])

    def state_dict(self) -> dict[str, Any]:
        """Where this loader stands: epoch, batches taken from each worker, and the world it ran in."""
        world = rank_world(self.dataset)
        pending = self.dataset.pending
        return {
            "epoch": self.epoch,
            "consumed": list(self._consumed),
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
            "seed": self.seed,
            "split": self.split,
            "window_blocks": self.dataset.window_blocks,
            "world": [world.num_nodes, world.ranks_per_node],
            "canonical_nodes": self.dataset.num_canonical_nodes,
            "pending": pending[1].to_state() if pending is not None and pending[0] == self.epoch else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where ``state`` stood, with no row repeated or skipped. A state saved by another
        number of ranks, workers or another batch size is resumed by dealing what was left of its
        epoch out to this world; the epochs after it are ordinary."""
        for key in ("seed", "split", "window_blocks"):
            mine = self.dataset.window_blocks if key == "window_blocks" else getattr(self, key)
            if state.get(key) != mine:
                raise DataError(
                    f"loader state: {key} was {state.get(key)!r} when saved, is {mine!r} now; "
                    f"resuming needs the same value"
                )
        epoch = int(state["epoch"])
        if state.get("canonical_nodes"):
            self.dataset.num_canonical_nodes = int(state["canonical_nodes"])
        pending = Pending.from_state(state["pending"]) if state.get("pending") is not None else None
        self.dataset.pending = (epoch, pending) if pending is not None else None
        world = rank_world(self.dataset)
        same = (
            list(state["world"]) == [world.num_nodes, world.ranks_per_node]
            and state["num_workers"] == self.num_workers
            and state["batch_size"] == self.batch_size
        )
        self.epoch = epoch
        if same:
            self._consumed = [int(c) for c in state["consumed"]]
            return
        nodes, ranks_per_node = state["world"]
        workers = max(1, int(state["num_workers"]))
        shares = self.dataset.world_shares(nodes, ranks_per_node, workers, epoch)
        emitted = [int(state["consumed"][slot % workers]) * int(state["batch_size"]) for slot in range(len(shares))]
        self.dataset.pending = (epoch, remaining(shares, emitted))
        self._consumed = [0] * max(1, self.num_workers)


def _one_line(err: RecfunnelError) -> RecfunnelError:
    """A DataLoader worker's error as the worker raised it: torch re-raises it in this process with
    the worker's traceback in the message ("Caught CorruptDataError in DataLoader worker process 0.
    Original Traceback ..."), and a user mistake must stay one line."""
    text = str(err)
    if "Original Traceback" not in text:
        return err
    last = text.strip().splitlines()[-1]  # "recfunnel.errors.CorruptDataError: <the message>"
    return type(err)(last.split(": ", 1)[1] if last.startswith("recfunnel.") and ": " in last else last)
