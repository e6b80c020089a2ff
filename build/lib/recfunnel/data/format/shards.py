"""MDS shards whose samples are blocks of rows, and the checks that they hold what was written.

One MDS sample per row decodes at ~15k rows/s, far slower than training; one sample per block of
``block_rows`` rows (default 4096) stored as raw little-endian arrays decodes at memory speed.
Block columns (all ``bytes`` except the two ints)::

    block       int    the block's index in its split (for accounting and error messages)
    rows        int    n, rows in the block
    dense       bytes  float32 (n, D)
    sparse      bytes  int64 (S, n) single-hot indices, feature-major (the KeyedJaggedTensor order)
    mh_lengths  bytes  int32 (n, M)
    mh_values   bytes  int64: feature 0's ids for all n rows, then feature 1's, ...
    labels      bytes  float32 (n, L)
    id_max      bytes  uint64 (S + M,): each feature's largest id (a negative id counts as huge)
    checksum    bytes  xxh3_64 of the block's other columns (8 bytes, little-endian)

Reading a block verifies its checksum (a flipped byte anywhere in it) and that every id lies in its
feature's table, so nothing corrupt reaches TorchRec, whose embedding lookups would silently map an
out-of-range id to row 0. Blocks written before checksums existed are read without that check.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from recfunnel.compat.streaming import import_streaming
from recfunnel.data.format.manifest import Manifest, SparseFeature, SplitInfo
from recfunnel.data.format.rows import Rows
from recfunnel.errors import ConfigError, CorruptDataError, DataError
from recfunnel.files import check_writable

__all__ = [
    "BLOCK_COLUMNS",
    "block_checksum",
    "SplitWriter",
    "run_lengths",
    "encode_block",
    "decode_block",
    "check_output",
    "check_shards",
]

BLOCK_COLUMNS = {
    "block": "int",
    "rows": "int",
    "dense": "bytes",
    "sparse": "bytes",
    "mh_lengths": "bytes",
    "mh_values": "bytes",
    "labels": "bytes",
    "id_max": "bytes",
    "checksum": "bytes",
}
HASH = "xxh3_64"
DATA_COLUMNS = ("dense", "sparse", "mh_lengths", "mh_values", "labels", "id_max")


def block_checksum(sample: dict) -> bytes:
    """xxh3_64 of a block's index, row count and the xxh3_64 of each data column, as 8
    little-endian bytes. (One-shot hashes of whole columns run at memory speed; xxhash's streaming
    ``update`` was 3x slower on 1 MB blocks.)"""
    parts = [int(sample["block"]), int(sample["rows"]), *(xxhash.xxh3_64_intdigest(sample[c]) for c in DATA_COLUMNS)]
    packed = np.array(parts[:2], np.int64).tobytes() + np.array(parts[2:], np.uint64).tobytes()
    return xxhash.xxh3_64_intdigest(packed).to_bytes(8, "little")


def encode_block(block: int, rows: Rows) -> dict:
    sample = {
        "block": block,
        "rows": len(rows),
        "dense": np.ascontiguousarray(rows.dense, np.float32).tobytes(),
        "sparse": np.ascontiguousarray(rows.sparse.T, np.int64).tobytes(),
        "mh_lengths": np.ascontiguousarray(rows.mh_lengths, np.int32).tobytes(),
        "mh_values": b"".join(np.ascontiguousarray(v, np.int64).tobytes() for v in rows.mh_values),
        "labels": np.ascontiguousarray(rows.labels, np.float32).tobytes(),
        "id_max": _id_max(np.ascontiguousarray(rows.sparse.T, np.int64), rows.mh_values).tobytes(),
    }
    sample["checksum"] = block_checksum(sample)
    return sample


def _id_max(sparse_t: np.ndarray, mh_values: list[np.ndarray]) -> np.ndarray:
    """The largest id of each feature as uint64 (S + M,): a negative id shows as larger than any
    table. Stored with the block (under its checksum), it lets a reader check every id is in its
    table without scanning them."""
    single = sparse_t.view(np.uint64).max(axis=1) if sparse_t.size else np.zeros(len(sparse_t), np.uint64)
    multi = [np.asarray(v, np.int64).view(np.uint64).max() if len(v) else np.uint64(0) for v in mh_values]
    return np.concatenate([single, np.array(multi, np.uint64)])


def decode_block(sample: dict, manifest: Manifest, where: str = "block", verify: bool = True) -> Rows:
    """A block sample back to :class:`Rows`. Content that does not match its checksum, or an id
    outside its feature's table, raises :class:`CorruptDataError`; sizes that do not match the
    manifest raise :class:`DataError`. ``where`` names the block's place in messages; ``verify``
    False skips the checksum and id checks (only to measure what they cost)."""
    n = int(sample["rows"])
    d, s, m, n_labels = len(manifest.dense), len(manifest.single_hot), len(manifest.multi_hot), len(manifest.labels)
    where = f"{where} {sample.get('block')}"
    stored = sample.get("checksum") if verify else None
    if stored is not None and block_checksum(sample) != stored:
        raise CorruptDataError(f"{where}: its content does not match its checksum; the shard is corrupt")

    def array(col: str, dtype: type, width: int) -> np.ndarray:
        buf = sample[col]
        expected = n * width * np.dtype(dtype).itemsize
        if len(buf) != expected:
            raise DataError(
                f"{where}: column {col!r} has {len(buf)} bytes, expected {expected} "
                f"({n} rows x {width}); the shard is corrupt or does not match manifest.json"
            )
        if col == "sparse":  # stored feature-major: return the (n, S) view of the (S, n) array
            return np.frombuffer(buf, dtype).reshape(width, n).T
        return np.frombuffer(buf, dtype).reshape(n, width)

    dense = array("dense", np.float32, d)
    sparse = array("sparse", np.int64, s)
    mh_lengths = array("mh_lengths", np.int32, m)
    labels = array("labels", np.float32, n_labels)
    flat = np.frombuffer(sample["mh_values"], np.int64) if m else np.zeros(0, np.int64)
    sizes = mh_lengths.sum(axis=0, dtype=np.int64)
    if len(flat) != int(sizes.sum()) or (len(sample["mh_values"]) % 8):
        raise DataError(
            f"{where}: column 'mh_values' has {len(sample['mh_values'])} bytes, expected "
            f"{int(sizes.sum()) * 8}; the shard is corrupt or does not match manifest.json"
        )
    cuts = np.cumsum(sizes)[:-1] if m else []
    mh_values = list(np.split(flat, cuts)) if m else []
    if verify:
        cards = np.array([f.cardinality for f in (*manifest.single_hot, *manifest.multi_hot)], np.uint64)
        id_max = sample.get("id_max") if stored is not None else None  # trusted only under a valid checksum
        if id_max is None or len(id_max) != 8 * len(cards) or (np.frombuffer(id_max, np.uint64) >= cards).any():
            _check_ids(where, sparse.T, manifest.single_hot)  # (S, n), each row contiguous
            _check_ids(where, mh_values, manifest.multi_hot)
    return Rows(dense, sparse, mh_lengths, mh_values, labels)


def _check_ids(where: str, columns: Any, features: list[SparseFeature]) -> None:
    """Every id of ``columns`` (an (S, n) array, or one int64 array per feature) in ``[0,
    cardinality)`` of its feature. One pass: as unsigned, a negative id is larger than any table."""
    if isinstance(columns, np.ndarray):
        if not columns.size:
            return
        tops = columns.view(np.uint64).max(axis=1)
    else:
        tops = np.array([v.view(np.uint64).max() if len(v) else 0 for v in columns], np.uint64)
    cards = np.array([f.cardinality for f in features], np.uint64)
    for j in np.flatnonzero(tops >= cards)[:1]:
        values, feature = columns[j], features[j]
        bad = values[(values < 0) | (values >= feature.cardinality)][0]
        raise CorruptDataError(
            f"{where}: feature {feature.name!r} holds id {int(bad)}, outside its table of "
            f"{feature.cardinality:,} rows; the shard is corrupt or does not belong to this manifest.json"
        )


class SplitWriter:
    """Writes one split's rows as fixed-size blocks to MDS shards.

    Every block has exactly ``block_rows`` rows except the last one, which is what lets the loader
    know block sizes (and so resume) without reading them. ``shuffle_seed`` shuffles rows inside a
    buffer of ``shuffle_blocks`` blocks before cutting them, so blocks are mixed even when input
    arrives sorted (e.g. by user); callers that hold the whole split should shuffle it whole.
    """

    def __init__(
        self,
        folder: str | Path,
        block_rows: int,
        *,
        shuffle_seed: int | None = None,
        shuffle_blocks: int = 64,
        compression: str | None = None,
        size_limit: str = "64mb",
    ):
        streaming = import_streaming()
        self.folder = Path(folder)
        self.block_rows = block_rows
        self.rng = np.random.default_rng(shuffle_seed) if shuffle_seed is not None else None
        self.shuffle_blocks = shuffle_blocks
        self._writer = streaming.MDSWriter(
            out=str(self.folder),
            columns=BLOCK_COLUMNS,
            compression=compression,
            hashes=[HASH],
            size_limit=size_limit,
            progress_bar=False,
        )
        self._pending: list[Rows] = []
        self._pending_rows = 0
        self._blocks: list[int] = []
        self._positives = 0.0

    def write(self, rows: Rows) -> None:
        if len(rows) == 0:
            return
        self._pending.append(rows)
        self._pending_rows += len(rows)
        limit = self.block_rows * (self.shuffle_blocks if self.rng is not None else 1)
        if self._pending_rows >= limit:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        rows = Rows.concat(self._pending) if self._pending else None
        self._pending, self._pending_rows = [], 0
        if rows is None:
            return
        if self.rng is not None:
            rows = rows.take(self.rng.permutation(len(rows)))
        full = (len(rows) // self.block_rows) * self.block_rows
        for start in range(0, full, self.block_rows):
            self._emit(rows.slice(start, start + self.block_rows))
        rest = rows.slice(full, len(rows))
        if len(rest) and final:
            self._emit(rest)
        elif len(rest):
            self._pending, self._pending_rows = [rest], len(rest)

    def _emit(self, rows: Rows) -> None:
        self._writer.write(encode_block(len(self._blocks), rows))
        self._blocks.append(len(rows))
        self._positives += float((rows.labels[:, 0] > 0).sum()) if rows.labels.shape[1] else 0.0

    def finish(self) -> SplitInfo:
        self._flush(final=True)
        self._writer.finish()
        rows = sum(self._blocks)
        return SplitInfo(
            rows=rows, blocks=run_lengths(self._blocks), positives=round(self._positives / rows, 6) if rows else None
        )


def run_lengths(sizes: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for s in sizes:
        if out and out[-1][1] == s:
            out[-1][0] += 1
        else:
            out.append([1, s])
    return out


def check_output(out: str | Path, overwrite: bool, block_rows: int = 4096) -> None:
    """Fail before any slow work when ``out`` exists (``atomic_output_dir`` checks again at the
    end), cannot be written, or ``block_rows`` is bad."""
    if Path(out).exists() and not overwrite:
        raise DataError(f"{out}: already exists; pass --overwrite to replace it")
    if block_rows < 1:
        raise ConfigError(f"--block-rows: {block_rows}, expected >= 1")
    check_writable(out)


def check_shards(
    folder: str | Path, manifest: Manifest, *, splits: list[str] | None = None, hashes: bool = False
) -> None:
    """Check that every split's MDS index matches the manifest and its shard files are whole.

    Always: index.json present, sample count = block count, rows add up, every shard file present
    with the size the index records. With ``hashes``: also each file's xxh3_64 (reads everything).
    """
    folder = Path(folder)
    for name, info in manifest.splits.items():
        if splits is not None and name not in splits:
            continue
        index_path = folder / name / "index.json"
        if not index_path.is_file():
            raise DataError(f"{index_path}: missing; manifest.json lists split {name!r}")
        try:
            index = json.loads(index_path.read_text())
            shards = index["shards"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(f"{index_path}: not a valid MDS index") from None
        samples = sum(s["samples"] for s in shards)
        blocks = sum(c for c, _ in info.blocks)
        rows = sum(c * r for c, r in info.blocks)
        if samples != blocks or rows != info.rows:
            raise DataError(
                f"{index_path}: {samples} blocks in the shards, manifest.json expects {blocks} "
                f"blocks / {info.rows} rows for split {name!r}"
            )
        for shard in shards:
            for kind in ("raw_data", "zip_data"):
                meta = shard.get(kind)
                if not meta:
                    continue
                path = folder / name / meta["basename"]
                if kind == "raw_data" and shard.get("zip_data") and not path.exists():
                    continue  # compressed shard: the raw file appears only once decompressed
                if not path.is_file():
                    raise DataError(f"{path}: shard file missing")
                size = path.stat().st_size
                if size != meta["bytes"]:
                    raise DataError(
                        f"{path}: {size} bytes, index.json expects {meta['bytes']}; the shard is truncated or corrupt"
                    )
                if hashes and meta.get("hashes", {}).get(HASH):
                    digest = xxhash.xxh3_64(path.read_bytes()).hexdigest()
                    if digest != meta["hashes"][HASH]:
                        raise DataError(f"{path}: content hash does not match index.json; the shard is corrupt")
