"""Pieces shared by the CTR-shaped sources (``criteo``, ``synthetic``): row splits, split writers,
ranking metrics (``auc``, ``logloss``, from ``recfunnel.metrics.ranking``), a file reader that hashes,
counts lines and reports progress as it streams, background prefetching, and categorical values as
integer keys.

Split codes are ``TRAIN`` / ``VAL`` / ``TEST`` (0 / 1 / 2). ``--val-fraction 0`` writes no val split.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import queue
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from recfunnel.data.format.manifest import SplitInfo
from recfunnel.data.format.rows import Rows
from recfunnel.data.format.shards import SplitWriter
from recfunnel.data.prepare.text_files import GZIP_ERRORS, GZIP_MAGIC, gzip_error
from recfunnel.errors import ConfigError, DataError
from recfunnel.metrics.ranking import auc
from recfunnel.metrics.ranking import log_loss as logloss

__all__ = [
    "TRAIN",
    "VAL",
    "TEST",
    "SPLIT_NAMES",
    "check_fractions",
    "split_names",
    "share",
    "position_uniform",
    "random_codes",
    "SplitWriters",
    "auc",
    "logloss",
    "progress",
    "TrackedFile",
    "prefetch",
    "distinct_keys",
    "string_keys",
    "key_strings",
    "KeyCounter",
]

T = TypeVar("T")
TRAIN, VAL, TEST = 0, 1, 2
SPLIT_NAMES = ("train", "val", "test")  # split code -> name
_M1, _M2, _GOLD = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """``ConfigError`` unless both fractions are in [0, 1), test > 0 and some rows are left for train."""
    for name, value in (("val-fraction", val_fraction), ("test-fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"--{name}: {value} is outside [0, 1)")
    if test_fraction == 0.0:
        raise ConfigError("--test-fraction: 0 leaves no test split; use a value in (0, 1)")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(f"--val-fraction {val_fraction} + --test-fraction {test_fraction} leave no rows for train")


def split_names(val_fraction: float) -> list[str]:
    return ["train", "val", "test"] if val_fraction > 0 else ["train", "test"]


def share(n: int, fraction: float) -> int:
    """Rows of ``n`` for a split of ``fraction``: rounded, at least 1 when the fraction is > 0."""
    return max(1, int(round(n * fraction))) if fraction > 0 else 0


def position_uniform(seed: int, start: int, n: int) -> np.ndarray:
    """float64 (n,) in [0, 1): a seeded hash (splitmix64) of the row positions ``start .. start+n-1``.

    A row's value depends only on ``seed`` and its position, not on how the input was chunked.
    """
    salt = np.uint64((seed * int(_M2)) % (1 << 64))  # Python ints: numpy scalars warn on overflow
    x = np.arange(start, start + n, dtype=np.uint64) * _GOLD + salt
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def random_codes(u: np.ndarray, val_fraction: float, test_fraction: float) -> np.ndarray:
    """Split code per row (int8) from uniforms ``u``: test below ``test_fraction``, then val, then train."""
    codes = np.full(len(u), TRAIN, np.int8)
    codes[u < test_fraction + val_fraction] = VAL
    codes[u < test_fraction] = TEST
    return codes


class SplitWriters:
    """One :class:`SplitWriter` per split under ``folder``; only ``shuffled`` splits get a shuffle buffer."""

    def __init__(
        self,
        folder: Path,
        names: list[str],
        *,
        block_rows: int,
        seed: int,
        compression: str | None,
        shuffled: tuple[str, ...] = ("train",),
    ):
        if block_rows < 1:
            raise ConfigError(f"--block-rows: {block_rows}, expected >= 1")
        self.names = names
        self.writers = {
            name: SplitWriter(
                folder / name, block_rows, compression=compression, shuffle_seed=seed if name in shuffled else None
            )
            for name in names
        }

    def write(self, name: str, rows: Rows) -> None:
        self.writers[name].write(rows)

    def write_codes(self, codes: np.ndarray, rows: Rows) -> None:
        """Route each row to the split its code (int8 (n,)) names."""
        for code, name in enumerate(SPLIT_NAMES):
            if name in self.writers:
                idx = np.flatnonzero(codes == code)
                if len(idx):
                    self.writers[name].write(rows.take(idx))

    def finish(self, total: int) -> dict[str, SplitInfo]:
        """Close every writer; an empty split raises ``DataError`` (``total`` rows were too few)."""
        infos = {name: w.finish() for name, w in self.writers.items()}
        for name, info in infos.items():
            if info.rows == 0:
                raise DataError(f"split {name!r} would be empty: {total} rows are too few for the split fractions")
        return infos


def progress(total: int, desc: str, quiet: bool, unit: str = "B") -> tqdm:
    """A progress bar on stderr (bytes by default): only on a terminal (never in logs or captured
    output), never under ``--quiet``; it erases itself when done."""
    scale: dict[str, Any] = {"unit_scale": True, "unit_divisor": 1024} if unit == "B" else {"unit_scale": True}
    return tqdm(
        total=total, desc=desc, unit=unit, file=sys.stderr, disable=True if quiet else None, leave=False, **scale
    )


class TrackedFile(io.RawIOBase):
    """A read-only binary file that hashes (sha256), counts lines and feeds a progress bar as it is read.

    Gzip data (Criteo's day files ship gzipped) is decompressed as it is read, never to disk;
    offsets, lines and the hash are then of the decompressed text, the progress bar counts the
    file's own bytes. ``line_limit`` ends the stream after that many lines, so a reader sees exactly
    the first lines of the file (``truncated`` says it did). ``checkpoints`` lists ``(byte offset,
    lines before it)`` at line starts, one per read, so a later pass can seek close to any line
    (in gzip data, by decompressing up to it). Hashing is optional (a second pass needs no hash).
    """

    def __init__(
        self,
        path: Path,
        *,
        start: int = 0,
        lines_before: int = 0,
        line_limit: int | None = None,
        hash_content: bool = False,
        bar: tqdm | None = None,
    ):
        super().__init__()
        self.path = path
        self._raw: BinaryIO = open(path, "rb")
        self.gzip = self._raw.read(2) == GZIP_MAGIC
        self._raw.seek(0)
        self._file: BinaryIO = gzip.GzipFile(fileobj=self._raw) if self.gzip else self._raw  # type: ignore[assignment]
        try:
            self._file.seek(start)
        except GZIP_ERRORS as err:
            raise gzip_error(path, err) from None
        self._raw_read = self._raw.tell()
        self.truncated = False
        self.start = start
        self.offset = start
        self.lines = lines_before
        self.line_limit = line_limit
        self.sha256 = hashlib.sha256() if hash_content else None
        self.bar = bar
        self.checkpoints: list[tuple[int, int]] = [(start, lines_before)]
        self._done = False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._done:
            return b""
        try:
            chunk = self._file.read(size)
        except GZIP_ERRORS as err:
            raise gzip_error(self.path, err) from None
        if self.line_limit is not None:
            whole = len(chunk)
            chunk = self._cut(chunk)
            self.truncated |= len(chunk) < whole
        if not chunk:
            self._done = True
            return b""
        newlines = chunk.count(b"\n")
        if newlines:
            self.checkpoints.append((self.offset + chunk.rfind(b"\n") + 1, self.lines + newlines))
        self.lines += newlines
        self.offset += len(chunk)
        if self.sha256 is not None:
            self.sha256.update(chunk)  # releases the GIL: overlaps with parsing on another thread
        if self.bar is not None:
            raw = self._raw.tell()
            self.bar.update(raw - self._raw_read)
            self._raw_read = raw
        return chunk

    def readinto(self, buffer: Any) -> int:
        chunk = self.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)

    def _cut(self, chunk: bytes) -> bytes:
        """Keep ``chunk`` up to and including the newline that ends line ``line_limit``."""
        assert self.line_limit is not None  # called only with a limit
        left = self.line_limit - self.lines
        if left <= 0:
            return b""
        if chunk.count(b"\n") < left:
            return chunk
        newline_at = np.flatnonzero(np.frombuffer(chunk, np.uint8) == ord("\n"))[left - 1]
        return chunk[: newline_at + 1]

    @property
    def bytes_read(self) -> int:
        return self.offset - self.start

    def close(self) -> None:
        self._file.close()
        self._raw.close()
        super().close()


def prefetch(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """``items``, produced up to ``depth`` ahead by a background thread and re-raised here if they
    fail. Parsing CSV releases the GIL, so it overlaps with the caller's encoding and writing."""
    box: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(entry: tuple[Any, BaseException | None]) -> None:
        while not stop.is_set():
            try:
                box.put(entry, timeout=0.1)
                return
            except queue.Full:
                continue

    def produce() -> None:
        try:
            for item in items:
                put((item, None))
                if stop.is_set():
                    break
            put((done, None))
        except BaseException as err:  # handed to the consumer, which re-raises it
            put((None, err))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name="prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item, err = box.get()
            if err is not None:
                raise err
            if item is done:
                return
            yield item
    finally:
        stop.set()
        worker.join()


# Categorical values as uint64 keys: exact for hex ids (Criteo's), a 60-bit hash for anything else.
# Key 0 is "missing"; a hex id of L digits (1..15, lowercase) is (L << 60) | value, so it decodes back
# to its text; other strings get a hash with the top 4 bits clear. Integer keys make counting and
# vocabulary look-ups ~10x faster than Python strings.
_NIBBLE = np.full(256, 255, np.uint8)
_NIBBLE[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16, dtype=np.uint8)
_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", np.uint8)
_LOW60 = np.uint64((1 << 60) - 1)


def distinct_keys(arr: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct values of a string array as keys, and where each row's value is among them.

    Returns ``keys`` uint64 (d,) of the distinct non-empty values, ``hashed`` bool (d,) marking the
    hashed ones (not hex: a caller that must decode them keeps their text), and ``index`` int64
    (n,): each row's position in ``keys``, -1 for a missing value. Work on ``d`` values, not ``n``:
    Criteo columns repeat their values a lot.
    """
    encoded = pc.dictionary_encode(arr.cast(pa.string()) if arr.type != pa.string() else arr)
    index = pc.fill_null(encoded.indices, -1).to_numpy().astype(np.int64)
    keys, hashed = string_keys(encoded.dictionary)
    if (keys == 0).any():  # an empty string is missing, like a null
        index = np.where(index >= 0, np.where(keys == 0, -1, np.arange(len(keys)))[np.maximum(index, 0)], -1)
    return keys, hashed, index


def string_keys(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """uint64 key (n,) per value of a string array (0 for null/empty), and bool (n,) marking the
    values that were hashed (not hex)."""
    arr = arr.cast(pa.string()) if arr.type != pa.string() else arr
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], np.int32, n + 1, arr.offset * 4).astype(np.int64)
    data = np.frombuffer(arr.buffers()[2], np.uint8) if arr.buffers()[2] is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    if arr.null_count:
        lengths = np.where(arr.is_valid().to_numpy(zero_copy_only=False), lengths, 0)
    present = lengths > 0
    keys = np.zeros(n, np.uint64)
    body = data[offsets[0] : offsets[-1]]
    if lengths[present].sum() != len(body):  # nulls with bytes behind them: gather the present values
        parts = [data[a:b] for a, b in zip(offsets[:-1][present], offsets[1:][present])]
        body = np.concatenate(parts) if parts else body[:0]
    keys[present], is_hex = _hex_values(body, lengths[present])
    hashed = np.zeros(n, bool)
    hashed[np.flatnonzero(present)[~is_hex]] = True
    if hashed.any():
        text = arr.filter(pa.array(hashed)).to_numpy(zero_copy_only=False)
        h = pd.util.hash_array(text.astype(object)) & _LOW60
        keys[hashed] = np.where(h == 0, np.uint64(1), h)
    return keys, hashed


def _hex_values(body: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keys of non-empty values packed in ``body`` (bytes) with ``lengths`` (m,), and which are hex."""
    m = len(lengths)
    nibbles = _NIBBLE[body]
    if m and (lengths == 8).all():  # Criteo's ids: 8 digits each, one reshape
        grid = nibbles.reshape(m, 8)
        value = np.zeros(m, np.uint64)
        for i in range(8):
            value = (value << np.uint64(4)) | grid[:, i]
        is_hex = (grid != 255).all(axis=1)
        return value | np.uint64(8 << 60), is_hex
    starts = np.zeros(m, np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    bad = np.add.reduceat((nibbles == 255).astype(np.int64), starts) if m else np.zeros(0, np.int64)
    is_hex = (bad == 0) & (lengths <= 15)
    # Each digit's weight: 16 ** (digits after it in its value).
    ends = np.repeat(starts + lengths, lengths)
    power = np.minimum(ends - 1 - np.arange(len(body)), 15).astype(np.uint64)
    contrib = (nibbles & np.uint8(15)).astype(np.uint64) << (np.uint64(4) * power)
    value = np.add.reduceat(contrib, starts) if m else np.zeros(0, np.uint64)
    return (value & _LOW60) | (np.minimum(lengths, 15).astype(np.uint64) << np.uint64(60)), is_hex


def key_strings(keys: np.ndarray, hashed_text: dict[int, str] | None = None) -> np.ndarray:
    """Object array of the texts of ``keys`` (hex keys decode; hashed ones come from ``hashed_text``)."""
    out = np.empty(len(keys), dtype=object)
    lengths = (keys >> np.uint64(60)).astype(np.int64)
    for length in np.unique(lengths[lengths > 0]):  # at most 15 groups, each vectorised
        idx = np.flatnonzero(lengths == length)
        shifts = np.uint64(4) * np.arange(length - 1, -1, -1, dtype=np.uint64)
        digits = (keys[idx, None] >> shifts) & np.uint64(15)
        out[idx] = np.char.decode(_HEX_DIGITS[digits].view(f"S{length}").ravel(), "ascii").astype(object)
    for i in np.flatnonzero(lengths == 0):  # hashed values: few in Criteo data
        out[i] = (hashed_text or {})[int(keys[i])]
    return out


class KeyCounter:
    """Counts of uint64 keys over many batches, merged in C++ (Arrow group-by) every so often."""

    def __init__(self) -> None:
        self._parts: list[pa.Table] = []
        self._pending = 0
        self._merged_rows = 0

    def add(self, keys: np.ndarray, counts: np.ndarray) -> None:
        """Add ``counts`` (int64 (d,), negative to subtract) to distinct ``keys`` (uint64 (d,))."""
        keep = counts != 0
        if not keep.any():
            return
        self._parts.append(pa.table({"key": keys[keep], "count": counts[keep].astype(np.int64)}))
        self._pending += int(keep.sum())
        if self._pending > max(self._merged_rows, 1 << 22):  # merge when the parts outgrow the total
            self._merge()

    def _merge(self) -> None:
        if len(self._parts) > 1:
            table = pa.concat_tables(self._parts).group_by("key", use_threads=False).aggregate([("count", "sum")])
            self._parts = [table.rename_columns({"count_sum": "count"}).select(["key", "count"])]
        self._merged_rows = sum(t.num_rows for t in self._parts)
        self._pending = 0

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys uint64 (k,), counts int64 (k,)) of the keys with a positive count."""
        self._merge()
        if not self._parts:
            return np.zeros(0, np.uint64), np.zeros(0, np.int64)
        keys = self._parts[0].column("key").to_numpy()
        counts = self._parts[0].column("count").to_numpy()
        keep = counts > 0
        return keys[keep], counts[keep]
