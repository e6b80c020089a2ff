"""Reading raw tables and checking their columns, with errors that name the file, line and column.

A :class:`Table` keeps the file's 1-based line numbers as its frame's index (rows for Parquet), so a
bad value found after any filtering can still be reported as ``ratings.csv line 5: ...``.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from recfunnel.data.prepare.text_files import GZIP_ERRORS, describe_undecodable, gzip_error, is_gzip
from recfunnel.errors import DataError

__all__ = [
    "Table",
    "read_csv_table",
    "read_parquet_table",
    "read_table",
    "require_columns",
    "closest_name",
    "to_ids",
    "to_numbers",
    "to_timestamps",
    "file_record",
]


@dataclass
class Table:
    """A raw table: ``frame.index`` holds file line numbers (``unit`` "line") or row numbers ("row")."""

    name: str  # the file's basename, for messages
    frame: pd.DataFrame
    unit: str = "line"
    aliases: dict[str, str] = field(default_factory=dict)  # column -> its name in the file, after rename()

    def at(self, pos: int) -> str:
        """Where row ``pos`` (0-based position in ``frame``) came from, e.g. ``ratings.csv line 5``."""
        return f"{self.name} {self.unit} {int(self.frame.index[pos])}"

    def label(self, col: str) -> str:
        """The column's name as the file spells it (messages speak the file's language)."""
        return self.aliases.get(col, col)

    def rename(self, mapping: dict[str, str]) -> None:
        """Rename columns to the standard names, remembering the file's names for messages."""
        mapping = {k: v for k, v in mapping.items() if k in self.frame.columns}
        self.frame = self.frame.rename(columns=mapping)
        self.aliases.update({new: self.aliases.get(old, old) for old, new in mapping.items()})


def read_csv_table(
    path: str | Path,
    *,
    sep: str = ",",
    header: bool = True,
    names: Sequence[str] | None = None,
    encoding: str = "utf-8",
    quoting: int = csv.QUOTE_MINIMAL,
    **kwargs: Any,
) -> Table:
    """Read a delimited text file, gzipped or not; blank lines are dropped, the index is the file
    line number.

    Without a header, ``names`` names the columns. Empty files, ragged lines, a column named twice
    in the header and undecodable bytes raise :class:`DataError` naming the file (and the line and
    byte offset of bad bytes).
    """
    path = Path(path)
    _check_not_empty(path)
    compression = "gzip" if is_gzip(path) else "infer"
    if header:
        _check_header(path, sep, encoding, quoting, compression)
    try:
        with warnings.catch_warnings():
            # Mixed types in a column are reported (with their line) by the column checks instead.
            warnings.simplefilter("ignore", pd.errors.DtypeWarning)
            # Rows with more fields than the header would drop their last fields: refuse them instead.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(
                path,
                sep=sep,
                header=0 if header else None,
                names=names,
                encoding=encoding,
                skip_blank_lines=False,
                quoting=quoting,
                compression=compression,
                index_col=False,  # never take the first column for an index when rows have a field more
                **kwargs,
            )
    except pd.errors.ParserWarning:
        raise DataError(
            f"{path.name}: the rows have more fields than the header names; check the delimiter "
            f"({sep!r}) and the header"
        ) from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path.name}: empty file") from None
    except pd.errors.ParserError as e:
        raise DataError(f"{path.name}: malformed ({_first_line(e)})") from None
    except UnicodeDecodeError:
        raise DataError(describe_undecodable(path, encoding)) from None
    except GZIP_ERRORS as err:
        raise gzip_error(path, err) from None
    except ValueError as e:  # e.g. usecols naming a column the file lacks
        raise DataError(f"{path.name}: {_first_line(e)}") from None
    frame.index = frame.index + (2 if header else 1)
    blank = frame.isna().all(axis=1).to_numpy()  # blank lines are kept by the parser so line numbers stay true
    if blank.any():
        frame = frame[~blank]
    if frame.empty:
        raise DataError(f"{path.name}: no rows" + (" (only a header)" if header else ""))
    return Table(path.name, frame)


def _check_header(path: Path, sep: str, encoding: str, quoting: int, compression: str) -> None:
    """A column named twice would be read as ``name`` and ``name.1``, and a second label column
    would silently become a feature: refuse it, naming it."""
    try:
        first = pd.read_csv(
            path,
            sep=sep,
            header=None,
            nrows=1,
            dtype=str,
            encoding=encoding,
            quoting=quoting,
            compression=compression,
            keep_default_na=False,
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError, *GZIP_ERRORS):
        return  # reading the whole file reports it, with its line
    names = [str(v).strip() for v in first.iloc[0].tolist()] if len(first) else []
    _no_duplicates(path, names)


def _no_duplicates(path: Path, names: list[str]) -> None:
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise DataError(
                f"{path.name}: column {name!r} appears twice in the header (columns {seen[name] + 1} "
                f"and {i + 1}); rename or drop one"
            )
        seen[name] = i


def read_parquet_table(path: str | Path) -> Table:
    """Read a Parquet file; the index is the 1-based row number."""
    path = Path(path)
    _check_not_empty(path)
    try:
        _no_duplicates(path, pq.read_schema(path).names)
        frame = pd.read_parquet(path)
    except DataError:
        raise
    except Exception as e:  # pyarrow raises several types for a file that is not Parquet
        raise DataError(f"{path.name}: not a readable Parquet file ({_first_line(e)})") from None
    if frame.empty:
        raise DataError(f"{path.name}: no rows")
    frame = frame.reset_index(drop=True)
    frame.index = frame.index + 1
    return Table(path.name, frame, unit="row")


def read_table(path: str | Path, *, sep: str | None = None) -> Table:
    """CSV/TSV or Parquet, chosen by the file name (``.parquet``/``.pq``; ``.tsv`` means tab; a
    ``.gz`` ending is looked past: text files may be gzipped)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffixes = [s.lower() for s in path.suffixes]
    kind = suffixes[-2] if len(suffixes) > 1 and suffixes[-1] == ".gz" else (suffixes[-1] if suffixes else "")
    if kind in (".parquet", ".pq") and not is_gzip(path):
        return read_parquet_table(path)
    return read_csv_table(path, sep=sep or ("\t" if kind == ".tsv" else ","))


def _check_not_empty(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path.name}: empty file")


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def closest_name(name: str, candidates: Sequence[str]) -> str | None:
    """The candidate most like ``name``, ignoring case and ``_``/``-``/spaces (``userId`` ~ ``user_id``)."""
    norm = {str(c).lower().replace("_", "").replace("-", "").replace(" ", ""): str(c) for c in candidates}
    key = name.lower().replace("_", "")
    if key in norm:
        return norm[key]
    match = difflib.get_close_matches(key, list(norm), n=1, cutoff=0.6)
    return norm[match[0]] if match else None


def require_columns(table: Table, required: Sequence[str], expected: str, hint: str = "") -> None:
    """Raise naming the first column of ``required`` that ``table`` lacks, and its closest look-alike.

    expected: what the file should hold, e.g. "user_id, item_id and rating or label";
    hint: appended after a suggestion, e.g. how to rename.
    """
    found = [str(c) for c in table.frame.columns]
    for col in required:
        if col in found:
            continue
        near = closest_name(col, [c for c in found if c not in required])
        guess = f"; did you mean {near!r}?{(' ' + hint.format(near=near, col=col)) if hint else ''}" if near else ""
        raise DataError(f"{table.name}: no column {col!r} (expected {expected}; found {', '.join(found)}){guess}")


def to_ids(table: Table, col: str, *, numeric: bool = False) -> pd.Series:
    """An id column as int64 (numeric ids: whole and >= 0) or str; missing ids raise.
    With ``numeric``, text ids are an error (e.g. MovieLens ids are numbers)."""
    s, name = table.frame[col], table.label(col)
    _no_missing(table, col, s)
    if pd.api.types.is_bool_dtype(s):
        raise DataError(f"{table.name}: column {name!r} holds true/false values, expected ids")
    if numeric and not pd.api.types.is_numeric_dtype(s):
        s = pd.Series(to_numbers(table, col), index=s.index, name=col)
    if pd.api.types.is_numeric_dtype(s):
        values = s.to_numpy()
        if pd.api.types.is_float_dtype(s):
            bad = ~np.isfinite(values) | (values != np.floor(values))
            _raise_at(table, bad, lambda v: f"{name} {v!r} is not a whole number; ids must be integers >= 0", values)
            # beyond 2^53 a float holds no exact integer: two ids could become one
            _raise_at(
                table,
                np.abs(values) > 2.0**53,
                lambda v: (
                    f"{name} {v!r} is too large for an exact id "
                    f"written as a decimal number; write ids as integers or text"
                ),
                values,
            )
        _raise_at(table, values < 0, lambda v: f"{name} {v!r} is negative; ids must be integers >= 0", values)
        if values.dtype == np.uint64 and len(values) and values.max() > np.iinfo(np.int64).max:
            return s.astype(str)  # ids of 2^63 and up, kept exactly as text (as an int64 they turn negative)
        return pd.Series(values.astype(np.int64), index=s.index, name=col)
    return s.astype(str)


def to_numbers(table: Table, col: str, *, missing_ok: bool = False) -> np.ndarray:
    """A numeric column as float64 (n,); text that is not a number and infinities raise, NaN raises
    unless ``missing_ok`` (then missing values stay NaN)."""
    s, name = table.frame[col], table.label(col)
    if pd.api.types.is_bool_dtype(s):
        return s.to_numpy(np.float64)
    if not pd.api.types.is_numeric_dtype(s):
        numbers = pd.to_numeric(s, errors="coerce")
        bad = (numbers.isna() & s.notna()).to_numpy()
        _raise_at(table, bad, lambda v: f"{name} {v!r} is not a number", s.to_numpy(dtype=object))
        s = numbers
    values = s.to_numpy(np.float64, na_value=np.nan)
    _raise_at(table, np.isinf(values), lambda v: f"{name} is {v}; expected a finite number", values)
    too_large = np.abs(np.nan_to_num(values)) > np.finfo(np.float32).max
    _raise_at(
        table,
        too_large,
        lambda v: f"{name} {v!r} is too large; numbers are kept as 32-bit floats (at most 3.4e38)",
        values,
    )
    if not missing_ok:
        _raise_at(table, np.isnan(values), lambda v: f"{name} is missing (NaN); expected a finite number", values)
    return values


def to_timestamps(table: Table, col: str) -> np.ndarray:
    """Timestamps as numbers: int64 seconds since 1970 for datetimes and date strings, numbers as
    they are (int64 when whole, else float64). Missing or unparseable values raise."""
    s, name = table.frame[col], table.label(col)
    _no_missing(table, col, s)
    numeric = pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)
    if numeric or not np.isnan(pd.to_numeric(s.iloc[:1].astype(str), errors="coerce").iloc[0]):
        values = to_numbers(table, col)  # numbers (the first value decides): text among them is an error
        _raise_at(table, np.abs(values) >= 2.0**63, lambda v: f"{name} {v!r} is too large for a timestamp", values)
        return values.astype(np.int64) if np.all(values == np.floor(values)) else values
    if pd.api.types.is_datetime64_any_dtype(s):
        stamps = pd.to_datetime(s, utc=True)
    else:
        stamps = pd.to_datetime(s.astype(str), errors="coerce", utc=True, format="ISO8601")
        if stamps.isna().any():
            stamps = pd.to_datetime(s.astype(str), errors="coerce", utc=True, format="mixed")
        raw = s.to_numpy(dtype=object)
        _raise_at(table, stamps.isna().to_numpy(), lambda v: f"{name} {v!r} is neither a number nor a date/time", raw)
    seconds = (stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    return seconds.to_numpy(np.int64)


def _no_missing(table: Table, col: str, s: pd.Series) -> None:
    missing = s.isna().to_numpy()
    if missing.any():
        raise DataError(f"{table.at(int(np.flatnonzero(missing)[0]))}: {table.label(col)} is missing")


def _raise_at(table: Table, bad: np.ndarray, message: Any, values: np.ndarray) -> None:
    """Raise for the first True in ``bad``: ``<file> line N: <message(value)>``."""
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        value = values[pos]
        value = value.item() if isinstance(value, np.generic) else value
        raise DataError(f"{table.at(pos)}: {message(value)}")


def file_record(path: str | Path) -> dict[str, Any]:
    """``{"name", "sha256", "bytes"}`` of a source file, for ``manifest.source["files"]``."""
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {"name": path.name, "sha256": digest.hexdigest(), "bytes": path.stat().st_size}
