"""Reading a prepared dataset's shards back whole, with Mosaic StreamingDataset (no loader, no shuffling)."""

from __future__ import annotations

from pathlib import Path

import torch.distributed as dist

from recfunnel.compat.streaming import import_streaming, release_shared_memory
from recfunnel.data.format.manifest import Manifest, load_manifest
from recfunnel.data.format.rows import Rows
from recfunnel.data.format.shards import decode_block

__all__ = ["read_split"]


def _sync() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def read_split(folder: str | Path, split: str, manifest: Manifest | None = None) -> tuple[Manifest, Rows]:
    """Every row of ``split`` in shard order, decoded from its MDS blocks (all in memory).
    ``manifest``: the folder's, when the caller has read it.

    Under a process group every rank must call this (opening a StreamingDataset is collective);
    each gets all rows, not its rank's share.
    """
    streaming = import_streaming()
    manifest = manifest if manifest is not None else load_manifest(folder)
    dataset = streaming.StreamingDataset(local=str(Path(folder) / split), remote=None, shuffle=False, batch_size=1)
    try:
        blocks = [decode_block(dataset[i], manifest, where=split) for i in range(dataset.num_samples)]
    finally:
        # all ranks attached to the leader's shared memory before it is freed, and all freed it
        # before any opens the next dataset (streaming picks prefixes by what exists)
        _sync()
        release_shared_memory(dataset)
        _sync()
    return manifest, Rows.concat(blocks)
