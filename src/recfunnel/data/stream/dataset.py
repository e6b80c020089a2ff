"""A StreamingDataset over row blocks that yields shuffled row batches, exactly once, resumably.

How rows are shuffled (two levels, both seeded by ``(seed, epoch)``):
1. StreamingDataset shuffles the order of *blocks* (its ``py1e`` shuffle over all shards) and
   partitions them over nodes, ranks and DataLoader workers.
2. Each worker takes its blocks in *windows* of ``window_blocks`` blocks and emits the window's
   rows in a random permutation. Since the train split was itself shuffled row by row when it
   was written, a batch mixes rows from ``window_blocks`` random blocks of a random row order.

How every row is seen exactly once: StreamingDataset pads ranks to equal block counts by
repeating blocks. We compute the epoch's whole partition (every rank does, deterministically),
mark each repeated block after its first occurrence as padding and give its rows weight 0.
Ranks then also emit the same number of batches (a rank short of rows pads its last batch with
weight-0 rows), which keeps collective ops in lockstep.

How resumption is exact: a worker's output is a pure function of (seed, epoch, world, its worker
index), and block sizes are known from the manifest. To resume after ``n`` batches of a worker,
it skips whole windows without reading them and drops the first rows of the window it stopped in.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from recfunnel.compat.streaming import (
    StreamingDataset,
    StreamingWorld,
    enter_worker,
    epoch_work,
    rank_world,
    release_shared_memory,
    shard_file,
)
from recfunnel.data.format.manifest import Manifest
from recfunnel.data.format.rows import Rows
from recfunnel.data.format.shards import decode_block
from recfunnel.data.stream.window import BatchParts, Window, join, to_tensors
from recfunnel.errors import CorruptDataError, DataError

__all__ = ["BlockStreamDataset", "EpochShare", "Pending", "remaining"]


class EpochShare:
    """One worker's share of an epoch: its windows of block ids, which blocks are padding copies,
    and how many rows it must emit so that every rank emits the same number of batches.

    ``starts`` (one per window) counts rows of a window's permutation already emitted before a
    resumption on another world size (see :class:`Pending`); 0 in an ordinary epoch.
    """

    def __init__(
        self,
        full: np.ndarray,
        block_rows: np.ndarray,
        node: int,
        rank_of_node: int,
        worker: int,
        is_copy: np.ndarray | None = None,
        starts: np.ndarray | None = None,
    ):
        # full: int64 (nodes, ranks_per_node, workers, windows, window_blocks), -1 = no block.
        if is_copy is None:
            flat = full.reshape(-1)
            valid = flat >= 0
            first = np.zeros(flat.shape, dtype=bool)
            _, first_pos = np.unique(flat[valid], return_index=True)
            first[np.flatnonzero(valid)[first_pos]] = True
            is_copy = ~first.reshape(full.shape) & (full >= 0)
        if starts is None:
            starts = np.zeros(full.shape[:4], dtype=np.int64)
        sizes = np.where(full >= 0, block_rows[np.maximum(full, 0)], 0)
        left = sizes.sum(axis=4) - starts  # rows each window still emits
        per_worker = left.sum(axis=3)  # (nodes, ranks, workers)
        self.windows = full[node, rank_of_node, worker]
        self.is_copy = is_copy[node, rank_of_node, worker]
        self.starts = starts[node, rank_of_node, worker]
        self.window_rows = sizes[node, rank_of_node, worker].sum(axis=1)  # whole windows, before starts
        self.rows = int(per_worker[node, rank_of_node, worker])
        self.target_rows = int(per_worker[:, :, worker].max())


@dataclass
class Pending:
    """What is left of an epoch, independent of world size: windows (block ids, padding-copy flags)
    and the rows of each window's permutation already emitted. Resuming on another number of
    ranks or workers deals these windows out afresh, so no row is repeated or skipped."""

    ids: np.ndarray  # int64 (P, window_blocks), -1 = no block
    copies: np.ndarray  # bool (P, window_blocks)
    starts: np.ndarray  # int64 (P,)

    def to_state(self) -> dict[str, list]:
        """Plain lists: the state stays JSON-serialisable."""
        return {"ids": self.ids.tolist(), "copies": self.copies.tolist(), "starts": self.starts.tolist()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Pending:
        return cls(
            np.asarray(state["ids"], np.int64), np.asarray(state["copies"], bool), np.asarray(state["starts"], np.int64)
        )

    def deal(self, num_nodes: int, ranks_per_node: int, workers: int) -> tuple[np.ndarray, ...]:
        """(full, is_copy, starts) arrays as :class:`EpochShare` takes them: window ``i`` goes to
        slot ``i % slots``, slots in (node, rank, worker) order."""
        slots = num_nodes * ranks_per_node * workers
        per_slot = max(1, -(-len(self.ids) // slots))
        width = self.ids.shape[1] if self.ids.ndim == 2 else 1
        full = np.full((slots, per_slot, width), -1, np.int64)
        copies = np.zeros((slots, per_slot, width), bool)
        starts = np.zeros((slots, per_slot), np.int64)
        for i in range(len(self.ids)):
            full[i % slots, i // slots] = self.ids[i]
            copies[i % slots, i // slots] = self.copies[i]
            starts[i % slots, i // slots] = self.starts[i]
        shape = (num_nodes, ranks_per_node, workers, per_slot)
        return full.reshape(*shape, width), copies.reshape(*shape, width), starts.reshape(shape)


def remaining(shares: list[EpochShare], emitted: list[int]) -> Pending:
    """The windows of ``shares`` (every slot of a world) not fully emitted after each slot emitted
    ``emitted[slot]`` rows; interleaved across slots so that dealing them out again stays balanced."""
    per_slot: list[list[tuple[np.ndarray, np.ndarray, int]]] = []
    for share, rows in zip(shares, emitted):
        left, done = [], 0
        for ids, copies, size, start in zip(share.windows, share.is_copy, share.window_rows, share.starts):
            size = int(size - start)
            if size <= 0 or done + size <= rows:
                done += max(size, 0)
                continue
            left.append((ids, copies, int(start) + max(0, rows - done)))
            done += size
        per_slot.append(left)
    order = [
        w for i in range(max(map(len, per_slot), default=0)) for w in (slot[i] for slot in per_slot if i < len(slot))
    ]
    width = shares[0].windows.shape[1] if shares else 1
    return Pending(
        np.array([w[0] for w in order], np.int64).reshape(-1, width),
        np.array([w[1] for w in order], bool).reshape(-1, width),
        np.array([w[2] for w in order], np.int64),
    )


class BlockStreamDataset(StreamingDataset):
    """Iterable of row batches (dicts of tensors) from block-shard splits.

    Set :meth:`set_epoch` before each iteration; the DataLoader forks workers with that state.
    """

    num_canonical_nodes: int | None  # StreamingDataset's; set from the first world seen when None

    def __init__(
        self,
        *,
        local: str,
        remote: str | None,
        manifest: Manifest,
        split: str,
        batch_size: int,
        shuffle: bool,
        seed: int,
        window_blocks: int,
        drop_last: bool,
        verify: bool = True,
        **kwargs: Any,
    ):
        super().__init__(
            local=local,
            remote=remote,
            split=None,
            shuffle=shuffle,
            shuffle_seed=seed,
            batch_size=window_blocks,
            **kwargs,
        )
        self.manifest = manifest
        self.split_name = split
        self.rows_per_batch = batch_size
        self.window_blocks = window_blocks
        self.drop_last = drop_last
        self.verify = verify
        self.block_rows = np.asarray(manifest.splits[split].block_rows(), dtype=np.int64)
        self._epoch = 0
        self._skip_batches: list[int] = [0]
        self._rotate = 0
        self.pending: tuple[int, Pending] | None = None  # (epoch, what is left of it) after a resharding
        # Blocks whose checksum and ids passed: each is checked the first time this run reads it.
        # DataLoader workers report theirs with their batches ("verified"), so later epochs skip them.
        self.verified = np.zeros(len(self.block_rows), bool)
        self._newly_verified: list[int] = []

    def close(self) -> None:
        release_shared_memory(self)

    def set_epoch(self, epoch: int, skip_batches: list[int]) -> None:
        """Next iteration runs ``epoch``, skipping ``skip_batches[w]`` batches of worker ``w``.

        The DataLoader takes batches from its workers round-robin starting with worker 0, so on
        resumption after ``n`` batches, worker slot 0 plays worker ``n % W``: batches then come
        in the same order as in an uninterrupted run.
        """
        self._epoch = epoch
        self._skip_batches = list(skip_batches)
        self._rotate = sum(skip_batches) % len(skip_batches)

    def share(self, world: StreamingWorld, epoch: int) -> EpochShare:
        """The share of ``epoch`` of the (node, rank, worker) slot that ``world`` names."""
        if self.pending is not None and self.pending[0] == epoch:
            full, copies, starts = self.pending[1].deal(world.num_nodes, world.ranks_per_node, world.workers_per_rank)
            return EpochShare(
                full, self.block_rows, world.node, world.rank_of_node, world.worker_of_rank, copies, starts
            )
        if not self.num_canonical_nodes:
            self.num_canonical_nodes = world.num_nodes
        full = epoch_work(self, world, epoch)
        return EpochShare(full, self.block_rows, world.node, world.rank_of_node, world.worker_of_rank)

    def world_shares(self, num_nodes: int, ranks_per_node: int, workers: int, epoch: int) -> list[EpochShare]:
        """The share of every (node, rank, worker) slot of a world, in slot order."""
        slots = num_nodes * ranks_per_node * workers
        return [self.share(StreamingWorld(num_nodes, ranks_per_node, workers, slot), epoch) for slot in range(slots)]

    def batches_per_worker(self, workers: int, epoch: int) -> list[int]:
        """Batches each of this rank's ``workers`` DataLoader workers emits in ``epoch``."""
        ranks = rank_world(self)
        workers = max(1, workers)
        counts = []
        for w in range(workers):
            world = StreamingWorld(ranks.num_nodes, ranks.ranks_per_node, workers, ranks.rank * workers + w)
            target = self.share(world, epoch).target_rows
            counts.append(target // self.rows_per_batch if self.drop_last else -(-target // self.rows_per_batch))
        return counts

    def __iter__(self) -> Iterator[dict[str, Any]]:
        slot = enter_worker(self)
        worker = (slot.worker_of_rank + self._rotate) % slot.workers_per_rank
        world = StreamingWorld(
            slot.num_nodes, slot.ranks_per_node, slot.workers_per_rank, slot.rank * slot.workers_per_rank + worker
        )
        share = self.share(world, self._epoch)
        skip_rows = self._skip_batches[worker] * self.rows_per_batch
        yield from self._batches(share, worker, skip_rows)

    def _windows(self, share: EpochShare, skip_rows: int) -> Iterator[Window]:
        """Each window in emission order, the first ``skip_rows`` rows of the worker dropped."""
        done = 0
        for w, (ids, copies) in enumerate(zip(share.windows, share.is_copy)):
            start = int(share.starts[w])  # emitted before a resharding
            size = int(share.window_rows[w]) - start
            if size <= 0:
                continue
            if done + size <= skip_rows:  # consumed before the checkpoint: not even read
                done += size
                continue
            keep = ids >= 0
            ids, copies = ids[keep], copies[keep]
            blocks = [self._block(int(i)) for i in ids]
            weights = np.repeat(np.where(copies, 0.0, 1.0).astype(np.float32), [len(b) for b in blocks])
            window = Window.of(blocks, weights)
            if self.shuffle:
                window.order = _shuffled(
                    np.random.default_rng([self.shuffle_seed, self._epoch, int(ids[0])]),
                    int(share.window_rows[w]),
                    int(self.manifest.extra.get("list_rows", 1)),
                )
            window.order = window.order[start + max(0, skip_rows - done) :]
            done += size
            yield window

    def _block(self, sample_id: int) -> Rows:
        where = f"{shard_file(self, sample_id)}: {self.split_name} block"
        try:
            sample = self[sample_id]
        except Exception as e:  # the shard's own framing is damaged: streaming cannot even cut the sample out
            raise CorruptDataError(
                f"{where} {sample_id}: unreadable ({type(e).__name__}: {e}); the shard is corrupt"
            ) from None
        check = self.verify and not self.verified[sample_id]
        rows = decode_block(sample, self.manifest, where=where, verify=check)
        if check:
            self.verified[sample_id] = True
            self._newly_verified.append(sample_id)
        if len(rows) != self.block_rows[sample_id]:
            raise DataError(
                f"{self.split_name} block {sample_id}: {len(rows)} rows, manifest.json says "
                f"{self.block_rows[sample_id]}; the manifest does not match its shards"
            )
        return rows

    def _tensors(self, parts: BatchParts, worker: int) -> dict[str, Any]:
        """A batch's tensors, with the blocks verified since the last batch (for the loader's record)."""
        out = to_tensors(parts, worker)
        out["verified"] = np.array(self._newly_verified, np.int64)
        self._newly_verified = []
        return out

    def _batches(self, share: EpochShare, worker: int, skip_rows: int) -> Iterator[dict[str, Any]]:
        bs = self.rows_per_batch
        total = share.target_rows
        if self.drop_last:
            total = (total // bs) * bs
        emitted = min(skip_rows, total)
        queue: list[Window] = []
        held = 0
        for window in self._windows(share, skip_rows):
            queue.append(window)
            held += len(window)
            while held >= bs and emitted + bs <= total:
                held -= bs
                emitted += bs
                yield self._tensors(_take(queue, bs), worker)
        # Rank padding: fill up to the rows the busiest rank's same worker emits, with weight 0.
        missing = total - emitted - held
        if missing > 0:
            queue.append(Window.padding(self.manifest, missing))
            held += missing
        while emitted < total:
            n = min(bs, total - emitted)
            held -= n
            emitted += n
            yield self._tensors(_take(queue, n), worker)


def _take(queue: list[Window], n: int) -> BatchParts:
    """The next ``n`` rows from the head of ``queue``, dropping windows as they empty."""
    parts = []
    while n:
        part = queue[0].take(n)
        n -= len(part["labels"])
        parts.append(part)
        if not len(queue[0]):
            queue.pop(0)
    return join(parts)


def _shuffled(rng: np.random.Generator, rows: int, group: int) -> np.ndarray:
    """An emission order of a window's rows: a permutation of its rows, or of its whole groups of
    ``group`` consecutive rows (candidate lists, kept together for listwise losses; blocks hold
    whole lists, so a window's rows are a multiple of ``group``)."""
    if group <= 1 or rows % group:
        return rng.permutation(rows)
    return (rng.permutation(rows // group)[:, None] * group + np.arange(group)).reshape(-1)
