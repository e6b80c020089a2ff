"""Criteo click logs: label, 13 integer and 26 categorical (hex) features, tab-separated, no header.

Kaggle's ``train.txt`` and the Terabyte ``day_N`` files share this layout; give several files in
time order. Files are streamed (never held in memory) in three passes: (1) count lines and hash
the files, (2) count categorical values on the training rows, (3) encode and write the shards.

Dense: missing -> 0, negative -> 0, then log(1 + x). Categorical: a vocabulary per feature of the
values seen at least ``--min-count`` times in training (rarer values, missing values and values
first seen in val/test share index 0), or with ``--hash-buckets N`` a seeded hash into N buckets.
Split: ``ordered`` (default) keeps time order: the last ``--test-fraction`` of rows -> test, the
``--val-fraction`` before them -> val; ``random`` draws each row's split from a seeded hash of
its position.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
from tqdm import tqdm

from recfunnel.data.rows import Rows
from recfunnel.data.schema import DenseFeature, Label, Manifest, SparseFeature
from recfunnel.data.shards import SplitWriter, atomic_output_dir
from recfunnel.data.vocab import Vocab, hash_encode
from recfunnel.errors import ConfigError, DataError

__all__ = ["HELP", "add_arguments", "run", "prepare_criteo"]

HELP = "Criteo click logs (TSV: label, 13 integer, 26 categorical), streamed"
DENSE = [f"int_{i}" for i in range(13)]
CATS = [f"cat_{i}" for i in range(26)]
COLUMNS = ["label"] + DENSE + CATS
SPLITS = ("train", "val", "test")
READ_BLOCK = 32 << 20  # bytes parsed at once


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", nargs="+", required=True, help="Criteo TSV files, in time order")
    parser.add_argument("--min-count", type=int, default=3,
                        help="values seen fewer times in train share index 0: too rare to learn, and they "
                             "bloat the tables (default 3)")
    parser.add_argument("--hash-buckets", type=int, default=None,
                        help="hash categorical values into N buckets instead of building vocabularies")
    parser.add_argument("--split", choices=["ordered", "random"], default="ordered",
                        help="ordered: the last rows (in time order) are val/test; random: a seeded draw per row")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--max-rows", type=int, default=None, help="use only the first N rows")


def run(args: argparse.Namespace) -> Manifest:
    return prepare_criteo(args.input, args.out, min_count=args.min_count, hash_buckets=args.hash_buckets,
                          split=args.split, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                          max_rows=args.max_rows, seed=args.seed, block_rows=args.block_rows,
                          compression=args.compression, overwrite=args.overwrite, quiet=args.quiet)


def prepare_criteo(inputs: list[str | Path], out: str | Path, *, min_count: int = 3, hash_buckets: int | None = None,
                   split: str = "ordered", val_fraction: float = 0.1, test_fraction: float = 0.1,
                   max_rows: int | None = None, seed: int = 42, block_rows: int = 4096,
                   compression: str | None = None, overwrite: bool = False, quiet: bool = False) -> Manifest:
    """Write Criteo TSV files as a recfunnel dataset (kind ``ctr``); returns its manifest."""
    _check_options(split, val_fraction, test_fraction, min_count, hash_buckets)
    files = [Path(p) for p in inputs]
    sources, total = _count_and_hash(files, max_rows, quiet)
    cuts = _ordered_cuts(total, val_fraction, test_fraction)
    splitter = _Splitter(split, cuts, val_fraction, test_fraction, seed)
    vocabs = None if hash_buckets else _count_vocabs(files, total, splitter, min_count, quiet)
    sparse = [SparseFeature(c, hash_buckets if hash_buckets else vocabs[c].cardinality,
                            encoding="hash" if hash_buckets else "vocab") for c in CATS]
    with atomic_output_dir(out, overwrite) as tmp:
        writers = {name: SplitWriter(tmp / name, block_rows, shuffle_seed=seed if name == "train" else None,
                                     compression=compression)
                   for name in _split_names(val_fraction, test_fraction)}
        for start, table in _chunks(files, total, quiet, "encoding"):
            codes = splitter(start, table.num_rows)
            rows = _encode(table, vocabs, hash_buckets)
            for code, name in enumerate(SPLITS):
                if name in writers:
                    writers[name].write(rows.take(np.flatnonzero(codes == code)))
        infos = {name: w.finish() for name, w in writers.items()}
        if vocabs:
            for vocab in vocabs.values():
                vocab.save(tmp / "vocab")
        manifest = Manifest(
            kind="ctr", dense=[DenseFeature(c, "log1p") for c in DENSE], sparse=sparse,
            labels=[Label("label", "binary", "click")], splits=infos,
            split={"kind": split, "seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction,
                   **({"cuts": list(cuts)} if split == "ordered" else {})},
            block_rows=block_rows,
            source={"kind": "criteo", "files": sources, "rows": total},
            extra={"min_count": None if hash_buckets else min_count, "hash_buckets": hash_buckets},
        )
        manifest.save(tmp)
    return manifest


def _check_options(split: str, val: float, test: float, min_count: int, hash_buckets: int | None) -> None:
    if split not in ("ordered", "random"):
        raise ConfigError(f"--split {split!r}: expected ordered or random")
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ConfigError(f"--val-fraction {val} / --test-fraction {test}: each in [0, 1), together < 1")
    if min_count < 1:
        raise ConfigError(f"--min-count {min_count}: expected >= 1")
    if hash_buckets is not None and hash_buckets < 2:
        raise ConfigError(f"--hash-buckets {hash_buckets}: expected >= 2")


def _split_names(val: float, test: float) -> list[str]:
    return ["train"] + (["val"] if val > 0 else []) + (["test"] if test > 0 else [])


def _ordered_cuts(total: int, val: float, test: float) -> tuple[int, int]:
    """Row positions where val and test start (time order)."""
    test_start = total - int(round(total * test))
    return test_start - int(round(total * val)), test_start


class _Splitter:
    """Split code (0 train, 1 val, 2 test) of rows ``start .. start + n`` of the concatenated files."""

    def __init__(self, kind: str, cuts: tuple[int, int], val: float, test: float, seed: int):
        self.kind, self.cuts, self.val, self.test, self.seed = kind, cuts, val, test, seed

    def __call__(self, start: int, n: int) -> np.ndarray:
        pos = np.arange(start, start + n, dtype=np.uint64)
        if self.kind == "ordered":
            return (pos >= self.cuts[0]).astype(np.int8) + (pos >= self.cuts[1]).astype(np.int8)
        salt = np.uint64((self.seed * 0x9E3779B97F4A7C15) % (1 << 64))  # the seed changes every row's draw
        u = (pd.util.hash_array(pos + salt) >> np.uint64(11)) / float(1 << 53)
        return np.where(u < self.test, 2, np.where(u < self.test + self.val, 1, 0)).astype(np.int8)


def _count_and_hash(files: list[Path], max_rows: int | None, quiet: bool) -> tuple[list[dict], int]:
    """Pass 1: every file exists and is non-empty; its SHA-256; rows to use in all."""
    sources, total = [], 0
    size = 0
    for f in files:
        if not f.is_file():
            raise DataError(f"{f}: no such file")
        size += f.stat().st_size
    bar = _bar(quiet, total=size, unit="B", unit_scale=True, desc="hashing")
    for f in files:
        digest, lines, last = hashlib.sha256(), 0, b"\n"
        with open(f, "rb") as fh:
            while chunk := fh.read(16 << 20):
                digest.update(chunk)
                lines += chunk.count(b"\n")
                last = chunk[-1:]
                bar.update(len(chunk))
        lines += last != b"\n"  # a last line without a newline
        if lines == 0:
            raise DataError(f"{f}: empty file; expected Criteo rows (label, 13 integer, 26 categorical, tab-separated)")
        sources.append({"name": f.name, "sha256": digest.hexdigest(), "bytes": f.stat().st_size, "rows": lines})
        total += lines
    bar.close()
    return sources, min(total, max_rows) if max_rows else total


def _bar(quiet: bool, **kwargs) -> tqdm:
    """A progress bar on stderr, only on a terminal (never in logs or captured output); it
    erases itself when closed."""
    return tqdm(disable=True if quiet else None, leave=False, **kwargs)


def _chunks(files: list[Path], total: int, quiet: bool, desc: str) -> Iterator[tuple[int, pa.Table]]:
    """(first row position, table) of parsed blocks of the files, up to ``total`` rows."""
    types = {"label": pa.int64(), **{c: pa.float64() for c in DENSE}, **{c: pa.string() for c in CATS}}
    start = 0
    bar = _bar(quiet, total=total, unit="rows", unit_scale=True, desc=desc)
    for f in files:
        line = 0
        try:  # open_csv already parses the first block
            reader = pcsv.open_csv(
                f, read_options=pcsv.ReadOptions(column_names=COLUMNS, block_size=READ_BLOCK),
                parse_options=pcsv.ParseOptions(delimiter="\t", quote_char=False),
                convert_options=pcsv.ConvertOptions(column_types=types, strings_can_be_null=True,
                                                    null_values=[""]))  # only empty is missing: "nan" is an error
        except pa.ArrowInvalid as e:
            raise _locate_error(f, 0, e) from None
        while start < total:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except pa.ArrowInvalid as e:
                raise _locate_error(f, line, e) from None
            table = pa.Table.from_batches([batch]).slice(0, total - start)
            _check_values(f, line, table)
            yield start, table
            start += table.num_rows
            line += table.num_rows
            bar.update(table.num_rows)
    bar.close()


def _check_values(f: Path, line: int, table: pa.Table) -> None:
    """Labels 0/1; integer columns hold finite integers (NaN/inf/1.5 are not Criteo values)."""
    label = table.column("label").to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(~np.isin(label, (0, 1)))
    if len(bad):
        raise DataError(f"{f} line {line + bad[0] + 1}: label {_show(label[bad[0]])}, expected 0 or 1")
    for c in DENSE:
        x = table.column(c).to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(~np.isnan(x) & (~np.isfinite(x) | (x != np.round(x)))
                             | np.isnan(x) & ~pc.is_null(table.column(c)).to_numpy(zero_copy_only=False))
        if len(bad):
            raise DataError(f"{f} line {line + bad[0] + 1}: column {c} is {_show(x[bad[0]])}, expected an integer or empty")


def _show(value: float) -> str:
    value = float(value)
    return str(int(value)) if np.isfinite(value) and value == int(value) else f"{value:g}"


def _locate_error(f: Path, first_line: int, err: pa.ArrowInvalid) -> DataError:
    """The parser's error with a file line number: rescan from the block's first line (error path only)."""
    with open(f, "rb") as fh:
        for i, raw in enumerate(fh):
            if i < first_line:
                continue
            fields = raw.rstrip(b"\r\n").split(b"\t")
            if len(fields) != 40:
                return DataError(f"{f} line {i + 1}: {len(fields)} fields, expected 40 "
                                 f"(label, 13 integer, 26 categorical, tab-separated)")
            for j, name in enumerate(COLUMNS[:14]):
                value = fields[j]
                if value and not value.lstrip(b"-").isdigit():
                    return DataError(f"{f} line {i + 1}: column {name} is {value.decode(errors='replace')!r}, "
                                     f"expected an integer or empty")
    return DataError(f"{f}: not Criteo TSV ({str(err).splitlines()[0]})")


def _count_vocabs(files: list[Path], total: int, splitter: _Splitter, min_count: int,
                  quiet: bool) -> dict[str, Vocab]:
    """Pass 2: value counts of each categorical feature over the training rows."""
    counts: dict[str, pd.Series] = {c: pd.Series(dtype=np.int64) for c in CATS}
    for start, table in _chunks(files, total, quiet, "counting"):
        train = pa.array(splitter(start, table.num_rows) == 0)
        part = table.filter(train)
        for c in CATS:
            vc = pc.value_counts(part.column(c).drop_null()).flatten()
            chunk = pd.Series(vc[1].to_numpy(), index=vc[0].to_numpy(zero_copy_only=False))
            counts[c] = counts[c].add(chunk, fill_value=0).astype(np.int64)
    return {c: Vocab.from_counts(c, counts[c], min_count=min_count) for c in CATS}


def _encode(table: pa.Table, vocabs: dict[str, Vocab] | None, hash_buckets: int | None) -> Rows:
    n = table.num_rows
    dense = np.stack([np.nan_to_num(table.column(c).to_numpy(zero_copy_only=False), nan=0.0) for c in DENSE], axis=1)
    dense = np.log1p(np.maximum(dense, 0.0)).astype(np.float32)
    cats = [table.column(c).to_numpy(zero_copy_only=False) for c in CATS]
    sparse = np.stack([hash_encode(v, hash_buckets) if hash_buckets else vocabs[c].encode(v)
                       for c, v in zip(CATS, cats)], axis=1)
    labels = table.column("label").to_numpy(zero_copy_only=False).astype(np.float32).reshape(n, 1)
    return Rows(dense, sparse, np.zeros((n, 0), np.int32), [], labels)
