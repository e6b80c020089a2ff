"""Tiny datasets written straight through the shard writer, independent of any source reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recfunnel.data.format.manifest import DenseFeature, Label, Manifest, SparseFeature
from recfunnel.data.format.rows import Rows
from recfunnel.data.format.shards import SplitWriter
from recfunnel.files import atomic_output_dir


def tiny_rows(n: int, start: int = 0, seed: int = 0) -> Rows:
    """Row i carries its id ``start + i`` as sparse feature ``row`` and as dense column 0."""
    rng = np.random.default_rng(seed)
    ids = np.arange(start, start + n, dtype=np.int64)
    lengths = rng.integers(0, 4, size=(n, 1)).astype(np.int32)
    values = (ids.repeat(lengths[:, 0]) % 50) + 1
    return Rows(
        dense=np.stack([ids.astype(np.float32), rng.normal(size=n).astype(np.float32)], axis=1),
        sparse=np.stack([ids + 1, rng.integers(1, 10, size=n)], axis=1),
        mh_lengths=lengths,
        mh_values=[values],
        labels=(rng.random((n, 1)) < 0.3).astype(np.float32),
    )


def write_tiny_dataset(out: Path, splits: dict[str, int], block_rows: int = 64) -> Manifest:
    """A dataset whose split ``s`` has ``splits[s]`` rows with globally unique row ids."""
    infos = {}
    total = sum(splits.values())
    with atomic_output_dir(out) as tmp:
        start = 0
        for name, n in splits.items():
            writer = SplitWriter(tmp / name, block_rows, shuffle_seed=1)
            for lo in range(0, n, 500):
                writer.write(tiny_rows(min(500, n - lo), start + lo, seed=lo))
            infos[name] = writer.finish()
            start += n
        manifest = Manifest(
            kind="ctr",
            dense=[DenseFeature("row_f"), DenseFeature("noise")],
            sparse=[
                SparseFeature("row", total + 1, encoding="index"),
                SparseFeature("small", 10, encoding="index"),
                SparseFeature("tags", 51, multi_hot=True, encoding="index", max_len=3),
            ],
            labels=[Label("label")],
            splits=infos,
            split={"kind": "fixed"},
            block_rows=block_rows,
        )
        manifest.save(tmp)
    return manifest


def split_row_keys(data: Path, split: str) -> list[str]:
    """Row keys (single-hot ids + first label, as in rank_worker.py) of every row of a split,
    read straight from the shards."""
    import json

    from recfunnel.compat.streaming import import_streaming
    from recfunnel.data.format.manifest import load_manifest
    from recfunnel.data.format.shards import decode_block

    import_streaming()
    from streaming.base.format import reader_from_json

    manifest = load_manifest(data)
    folder = Path(data) / split
    keys: list[str] = []
    for info in json.loads((folder / "index.json").read_text())["shards"]:
        shard = reader_from_json(str(folder), None, info)
        for i in range(shard.samples):
            rows = decode_block(shard[i], manifest)
            mat = np.concatenate([rows.sparse, rows.labels[:, :1].astype(np.int64)], axis=1)
            keys += [",".join(map(str, r)) for r in mat.tolist()]
    return keys
