"""``recfunnel prepare criteo``: Criteo click logs to a sharded CTR dataset, streamed in two passes.

Input: Kaggle's ``train.txt`` or Terabyte ``day_N`` files (give several in time order): per line a
0/1 label, 13 integer and 26 categorical (hex id) fields, tab-separated, no header; an empty field
is a missing value. Files are never held in memory:

pass 1  parse and check every line, hash the files (SHA-256), count rows and count categorical
        values on the training rows. With ``--split ordered`` the training rows are known only
        once all rows are counted, so the held-out tail (val + test) is then read once more from
        its nearest line checkpoint and its counts are subtracted.
pass 2  encode and write the shards of each split: train rows are mixed by the writer's shuffle
        buffer, val and test keep file order.

Dense: missing -> 0, negative -> 0, then log(1 + x). Categorical: a vocabulary per feature of the
values seen at least ``--min-count`` times in the training rows (rarer and missing values, and
values seen only in val/test, share index 0), or ``--hash-buckets N``: index 1 + hash % (N - 1).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recfunnel.data.format.manifest import DenseFeature, Label, Manifest, SparseFeature, SplitInfo
from recfunnel.data.format.rows import Rows
from recfunnel.data.format.shards import check_output
from recfunnel.data.format.vocab import Vocab, hash_encode
from recfunnel.data.sources.criteo_text import CATS, DENSE, LAYOUT, read_batches
from recfunnel.data.sources.ctr_common import (
    TRAIN,
    KeyCounter,
    SplitWriters,
    TrackedFile,
    check_fractions,
    distinct_keys,
    key_strings,
    position_uniform,
    prefetch,
    progress,
    random_codes,
    share,
    split_names,
    string_keys,
)
from recfunnel.errors import ConfigError, DataError
from recfunnel.files import atomic_output_dir

__all__ = ["HELP", "add_arguments", "run", "prepare_criteo"]

HELP = "Criteo click logs (TSV: label, 13 integer, 26 categorical), streamed in two passes"
DEFAULT_MIN_COUNT = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", nargs="+", required=True, help="Criteo TSV files, in time order")
    parser.add_argument(
        "--min-count",
        type=int,
        default=DEFAULT_MIN_COUNT,
        help="values seen fewer times in the training rows share index 0 (default "
        f"{DEFAULT_MIN_COUNT}: the threshold of the published Criteo benchmarks; on Kaggle it "
        "keeps ~1M of ~34M distinct values, each seen often enough to learn)",
    )
    parser.add_argument(
        "--hash-buckets",
        type=int,
        default=None,
        help="hash categorical values into N buckets instead of vocabularies (no vocab files; "
        "--min-count does not apply); for id spaces too big to count, e.g. Terabyte",
    )
    parser.add_argument(
        "--split",
        choices=["ordered", "random"],
        default="ordered",
        help="ordered: the last rows in file order (time order) are val/test; random: a seeded "
        "draw per row position (default ordered)",
    )
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of rows in val, 0 = none (default 0.1)")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="share of rows in test (default 0.1)")
    parser.add_argument("--max-rows", type=int, default=None, help="use only the first N rows of the files")


def run(args: argparse.Namespace) -> Manifest:
    return prepare_criteo(
        args.input,
        args.out,
        min_count=args.min_count,
        hash_buckets=args.hash_buckets,
        split=args.split,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        max_rows=args.max_rows,
        seed=args.seed,
        block_rows=args.block_rows,
        compression=args.compression,
        overwrite=args.overwrite,
        quiet=args.quiet,
    )


@dataclass
class _File:
    """What pass 1 learnt about one input file."""

    path: Path
    rows: int  # rows used (all of them unless --max-rows cut the file)
    bytes: int  # bytes read (and hashed); of the decompressed text for gzip files
    sha256: str
    checkpoints: list[tuple[int, int]]  # (byte offset, lines before it) at line starts
    partial: bool = False  # --max-rows stopped before the file's end
    gzip: bool = False

    def record(self) -> dict:
        return {
            "name": self.path.name,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "rows": self.rows,
            **({"gzip": True} if self.gzip else {}),
            **({"partial": True} if self.partial else {}),
        }


def prepare_criteo(
    inputs: list[str | Path],
    out: str | Path,
    *,
    min_count: int = DEFAULT_MIN_COUNT,
    hash_buckets: int | None = None,
    split: str = "ordered",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    max_rows: int | None = None,
    seed: int = 42,
    block_rows: int = 4096,
    compression: str | None = None,
    overwrite: bool = False,
    quiet: bool = False,
) -> Manifest:
    """Write Criteo TSV files as a dataset of kind ``ctr`` in ``out``; returns its manifest."""
    files = _check(inputs, split, val_fraction, test_fraction, min_count, hash_buckets, max_rows)
    check_output(out, overwrite, block_rows)
    plan = _Plan(split, val_fraction, test_fraction, seed)
    counters = None if hash_buckets else [KeyCounter() for _ in CATS]
    texts: list[dict[int, str]] = [{} for _ in CATS]
    scans = _pass_one(files, max_rows, plan, counters, texts, quiet)
    plan.set_rows(sum(f.rows for f in scans))
    vocabs = None
    if counters is not None:
        if split == "ordered":
            _subtract_tail(scans, plan.cuts[0], counters, texts, quiet)
        vocabs = [_vocab(name, c, t, min_count) for name, c, t in zip(CATS, counters, texts)]
    with atomic_output_dir(out, overwrite) as tmp:
        writers = SplitWriters(
            tmp, split_names(val_fraction), block_rows=block_rows, seed=seed, compression=compression
        )
        _pass_two(scans, plan, _Encoder(vocabs, hash_buckets), writers, quiet)
        splits = writers.finish(plan.rows)
        for vocab in vocabs or []:
            vocab.save(tmp / "vocab")
        manifest = _manifest(scans, plan, splits, vocabs, hash_buckets, min_count, max_rows, block_rows)
        manifest.save(tmp)
    return manifest


def _check(
    inputs: list[str | Path],
    split: str,
    val: float,
    test: float,
    min_count: int,
    hash_buckets: int | None,
    max_rows: int | None,
) -> list[Path]:
    """Options and input files, before any slow work."""
    if split not in ("ordered", "random"):
        raise ConfigError(f"--split: {split!r}, expected ordered or random")
    check_fractions(val, test)
    if min_count < 1:
        raise ConfigError(f"--min-count: {min_count}, expected >= 1")
    if hash_buckets is not None and hash_buckets < 2:
        raise ConfigError(f"--hash-buckets: {hash_buckets}, expected >= 2")
    if max_rows is not None and max_rows < 1:
        raise ConfigError(f"--max-rows: {max_rows}, expected >= 1")
    if not inputs:
        raise ConfigError("--input: no files given")
    files = [Path(p) for p in inputs]
    for f in files:
        if not f.exists():
            raise DataError(f"{f}: no such file")
        if not f.is_file():
            raise DataError(f"{f}: not a file; expected Criteo rows ({LAYOUT})")
        if f.stat().st_size == 0:
            raise DataError(f"{f}: empty file; expected Criteo rows ({LAYOUT})")
    return files


class _Plan:
    """Which split each row position goes to. ``ordered`` needs the row count (``set_rows``) first."""

    def __init__(self, kind: str, val: float, test: float, seed: int):
        self.kind, self.val, self.test, self.seed = kind, val, test, seed
        self.rows = 0
        self.cuts = (0, 0)  # row positions where val and test start (ordered)

    def set_rows(self, rows: int) -> None:
        self.rows = rows
        test_start = rows - share(rows, self.test)
        self.cuts = (test_start - share(rows, self.val), test_start)
        if self.kind == "ordered" and self.cuts[0] < 1:
            raise DataError(f"{rows} rows are too few for --val-fraction {self.val} --test-fraction {self.test}")

    def random_codes(self, start: int, n: int) -> np.ndarray:
        """``random`` split: the code (int8 (n,)) of row positions ``start .. start + n - 1``."""
        return random_codes(position_uniform(self.seed, start, n), self.val, self.test)

    def ordered_bounds(self, start: int, n: int) -> np.ndarray:
        """``ordered`` split: where train / val / test begin and end within rows ``start .. start + n - 1``."""
        return np.clip(np.array([0, *self.cuts, self.rows]) - start, 0, n)

    def record(self, splits: dict[str, SplitInfo]) -> dict:
        out = {"kind": self.kind, "seed": self.seed, "val_fraction": self.val, "test_fraction": self.test}
        if self.kind == "ordered":
            out["cuts"] = {"val": self.cuts[0], "test": self.cuts[1]}
        return {**out, "rows": {name: info.rows for name, info in splits.items()}}


def _pass_one(
    files: list[Path],
    max_rows: int | None,
    plan: _Plan,
    counters: list[KeyCounter] | None,
    texts: list[dict[int, str]],
    quiet: bool,
) -> list[_File]:
    """Check, hash and count rows of every file; count categorical keys of training rows."""
    scans: list[_File] = []
    total = 0
    desc = "criteo pass 1/2: checking, hashing" + (", counting" if counters else "")
    with progress(sum(f.stat().st_size for f in files), desc, quiet) as bar:
        for path in files:
            limit = None if max_rows is None else max_rows - total
            if limit == 0:
                break
            with TrackedFile(path, line_limit=limit, hash_content=True, bar=bar) as source:
                rows = 0
                for line, batch in prefetch(read_batches(path, source)):
                    if counters is not None:  # ordered: count every row, subtract val/test later
                        train = None if plan.kind == "ordered" else plan.random_codes(total + line - 1, len(batch))
                        _count(batch, counters, texts, None if train is None else train == TRAIN)
                    rows += len(batch)
                assert source.sha256 is not None  # hash_content=True
                scans.append(
                    _File(
                        path,
                        rows,
                        source.bytes_read,
                        source.sha256.hexdigest(),
                        source.checkpoints,
                        partial=source.truncated,
                        gzip=source.gzip,
                    )
                )
            total += rows
    return scans


def _count(
    batch: pa.RecordBatch,
    counters: list[KeyCounter],
    texts: list[dict[int, str]],
    rows: np.ndarray | None,
    sign: int = 1,
) -> None:
    """Add (or subtract) the categorical keys of ``batch``'s rows (a bool mask, or None for all)."""
    for j, counter in enumerate(counters):
        col = batch.column(1 + len(DENSE) + j)
        keys, hashed, index = distinct_keys(col)
        if rows is not None:
            index = index[rows]
        counts = np.bincount(index[index >= 0], minlength=len(keys))
        counter.add(keys, sign * counts)
        hashed &= counts > 0
        if sign > 0 and hashed.any():  # non-hex values: keep their text to write the vocabulary
            text = pc.dictionary_encode(col).dictionary.take(pa.array(np.flatnonzero(hashed))).to_pylist()
            texts[j].update((k, t) for k, t in zip(keys[hashed].tolist(), text) if k not in texts[j])


def _subtract_tail(
    scans: list[_File], train_rows: int, counters: list[KeyCounter], texts: list[dict[int, str]], quiet: bool
) -> None:
    """Ordered split: subtract the counts of rows from ``train_rows`` on (val + test), re-reading them."""
    before = 0
    tail_bytes = sum(f.bytes for f in scans)  # an upper bound, for the progress bar
    with progress(tail_bytes, "criteo: recounting val/test rows", quiet) as bar:
        for scan in scans:
            skip = train_rows - before  # rows of this file that are train
            before += scan.rows
            if skip >= scan.rows:
                continue
            offset, lines = max(((o, n) for o, n in scan.checkpoints if n <= max(skip, 0)), key=lambda c: c[1])
            with TrackedFile(scan.path, start=offset, lines_before=lines, line_limit=scan.rows, bar=bar) as source:
                for line, batch in prefetch(read_batches(scan.path, source)):
                    first = max(skip - (line - 1), 0)  # rows of this batch still in train
                    if first < len(batch):
                        _count(batch.slice(first), counters, texts, None, sign=-1)


def _vocab(name: str, counter: KeyCounter, texts: dict[int, str], min_count: int) -> Vocab:
    keys, counts = counter.result()
    keep = counts >= min_count
    values = key_strings(keys[keep], texts)
    return Vocab.from_counts(name, pd.Series(counts[keep], index=pd.Index(values, dtype=object)))


class _Encoder:
    """A checked batch -> :class:`Rows` (dense (n, 13), sparse (n, 26), labels (n, 1))."""

    def __init__(self, vocabs: list[Vocab] | None, hash_buckets: int | None):
        self.hash_buckets = hash_buckets or 0  # used only when vocabs is None, then set
        # Keys of each vocabulary in index order, in a hash index built once (not once per batch).
        self.index = [pd.Index(string_keys(pa.array(v.values.tolist(), pa.string()))[0]) for v in vocabs or []]

    def __call__(self, batch: pa.RecordBatch) -> Rows:
        n = len(batch)
        dense = np.empty((n, len(DENSE)), np.float32)
        for j in range(len(DENSE)):
            x = pc.fill_null(batch.column(1 + j), 0).to_numpy()
            dense[:, j] = np.log1p(np.maximum(x, 0))
        sparse = np.empty((n, len(CATS)), np.int64)
        for j in range(len(CATS)):
            col = batch.column(1 + len(DENSE) + j)
            sparse[:, j] = self._hash(col) if self.hash_buckets else self._lookup(j, col)
        labels = pc.equal(batch.column(0), "1").to_numpy(zero_copy_only=False).astype(np.float32).reshape(n, 1)
        return Rows(dense, sparse, np.zeros((n, 0), np.int32), [], labels)

    def _lookup(self, j: int, col: pa.Array) -> np.ndarray:
        """Vocabulary index of each value (0 = OOV or missing), looking up each distinct value once."""
        keys, _, index = distinct_keys(col)
        return np.append(self.index[j].get_indexer(keys) + 1, 0)[index]

    def _hash(self, col: pa.Array) -> np.ndarray:
        """``hash_encode`` of each distinct value once per batch (Criteo repeats values a lot)."""
        encoded = pc.dictionary_encode(col)
        distinct = encoded.dictionary.to_numpy(zero_copy_only=False)
        buckets = np.append(hash_encode(distinct, self.hash_buckets) if len(distinct) else [], 0).astype(np.int64)
        return buckets[pc.fill_null(encoded.indices, len(distinct)).to_numpy()]


def _pass_two(scans: list[_File], plan: _Plan, encode: _Encoder, writers: SplitWriters, quiet: bool) -> None:
    start = 0
    with progress(sum(f.bytes for f in scans), "criteo pass 2/2: writing", quiet) as bar:
        for scan in scans:
            rows = 0
            with TrackedFile(scan.path, line_limit=scan.rows, bar=bar) as source:
                for line, batch in prefetch(read_batches(scan.path, source)):
                    position = start + line - 1
                    encoded = encode(batch)
                    if plan.kind == "random":
                        writers.write_codes(plan.random_codes(position, len(batch)), encoded)
                    else:  # contiguous ranges: slices, no gather
                        bounds = plan.ordered_bounds(position, len(batch))
                        for code, name in enumerate(("train", "val", "test")):
                            if bounds[code + 1] > bounds[code] and name in writers.names:
                                writers.write(name, encoded.slice(int(bounds[code]), int(bounds[code + 1])))
                    rows += len(batch)
            if rows != scan.rows:
                raise DataError(
                    f"{scan.path}: {rows} rows on the second pass, {scan.rows} on the first; "
                    "did the file change while it was read?"
                )
            start += rows


def _manifest(
    scans: list[_File],
    plan: _Plan,
    splits: dict[str, SplitInfo],
    vocabs: list[Vocab] | None,
    hash_buckets: int | None,
    min_count: int,
    max_rows: int | None,
    block_rows: int,
) -> Manifest:
    if vocabs is not None:
        sparse = [SparseFeature(v.name, v.cardinality, encoding="vocab") for v in vocabs]
        encoding = {"min_count": min_count, "kept": {v.name: len(v.values) for v in vocabs}}
    else:
        assert hash_buckets is not None  # no vocabularies: hashed
        sparse = [SparseFeature(c, hash_buckets, encoding="hash") for c in CATS]
        encoding = {"hash_buckets": hash_buckets}
    return Manifest(
        kind="ctr",
        dense=[DenseFeature(c, "log1p") for c in DENSE],
        sparse=sparse,
        labels=[Label("label", "binary", "click")],
        splits=splits,
        split=plan.record(splits),
        block_rows=block_rows,
        source={
            "kind": "criteo",
            "files": [s.record() for s in scans],
            "rows": plan.rows,
            **({"max_rows": max_rows} if max_rows else {}),
        },
        extra={"categorical": encoding},
    )
