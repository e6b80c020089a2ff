"""Criteo's text format: tab-separated lines of a 0/1 label, 13 integer and 26 categorical fields,
read as checked Arrow batches; a line that does not fit is named by file and line (and a bad
integer by its column, bytes that are not text by their byte offset)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from recfunnel.data.prepare.text_files import describe_undecodable, first_undecodable
from recfunnel.data.sources.ctr_common import TrackedFile
from recfunnel.errors import DataError

__all__ = ["DENSE", "CATS", "COLUMNS", "LAYOUT", "READ_BLOCK", "read_batches"]

DENSE = [f"int_{i}" for i in range(13)]
CATS = [f"cat_{i}" for i in range(26)]
COLUMNS = ["label"] + DENSE + CATS
LAYOUT = "label, 13 integer, 26 categorical, tab-separated"
READ_BLOCK = 32 << 20  # bytes parsed at once: ~130k Criteo rows


def read_batches(
    path: Path, source: TrackedFile, types: dict[str, pa.DataType] | None = None, locate: bool = True
) -> Iterator[tuple[int, pa.RecordBatch]]:
    """Checked batches of a Criteo file as ``(line number of the first row, batch)``. Lines are
    numbered from 1 at the file's start, also when ``source`` starts at a later checkpoint.
    A value the parser refuses raises a one-line :class:`DataError` naming its line (``locate``:
    found by reading the file again; without it, the parser's own words)."""
    first = source.lines + 1
    invalid: list[pcsv.InvalidRow] = []
    types = types or {"label": pa.string(), **{c: pa.int64() for c in DENSE}, **{c: pa.string() for c in CATS}}

    def on_invalid(row: pcsv.InvalidRow) -> str:
        invalid.append(row)
        return "skip"

    # A ragged row that is not UTF-8 cannot even be handed to on_invalid: pyarrow reports that
    # through sys.unraisablehook (a traceback on stderr) and goes on. Say it in one line instead.
    undecodable: list[BaseException] = []
    previous_hook = sys.unraisablehook

    def unraisable(info: Any) -> None:
        if isinstance(info.exc_value, UnicodeDecodeError) and info.object is on_invalid:
            undecodable.append(info.exc_value)
        else:
            previous_hook(info)

    sys.unraisablehook = unraisable
    try:
        reader = pcsv.open_csv(  # serial reading: the parser then numbers bad rows
            source,
            read_options=pcsv.ReadOptions(column_names=COLUMNS, block_size=READ_BLOCK, use_threads=False),
            parse_options=pcsv.ParseOptions(
                delimiter="\t", quote_char=False, ignore_empty_lines=False, invalid_row_handler=on_invalid
            ),
            convert_options=pcsv.ConvertOptions(column_types=types, null_values=[""], strings_can_be_null=True),
        )
        line = first
        for batch in reader:
            if invalid:
                break
            _check_labels(path, line, batch.column(0))
            yield line, batch
            line += batch.num_rows
    except pa.ArrowInvalid as err:  # an integer field that is not an integer, or bytes that are not text
        if not locate:
            raise DataError(f"{path}: not Criteo text ({str(err).splitlines()[0]})") from None
        raise _locate(path, err) from None
    finally:
        sys.unraisablehook = previous_hook
    if undecodable:
        raise DataError(describe_undecodable(path))
    if invalid:
        row = invalid[0]
        where = f"line {first - 1 + row.number}" if row.number is not None else "a line"
        raise DataError(f"{path} {where}: {row.actual_columns} fields, expected 40 ({LAYOUT})")


def _check_labels(path: Path, line: int, label: pa.Array) -> None:
    ok = pc.fill_null(pc.is_in(label, value_set=pa.array(["0", "1"])), False).to_numpy(zero_copy_only=False)
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        value = label[i].as_py()
        shown = "is empty" if value is None else _show(value)
        raise DataError(f"{path} line {line + i}: label {shown}, expected 0 or 1")


def _show(text: str) -> str:
    """A field for an error message: numbers as they are (nan, 1.5, 2), other text quoted."""
    try:
        float(text)
        return text.strip()
    except ValueError:
        return repr(text)


def _locate(path: Path, err: pa.ArrowInvalid) -> DataError:
    """Re-read ``path`` to name the line of bytes that are not UTF-8 text, or the line and column
    of a bad integer (error path only)."""
    if first_undecodable(path) is not None:  # binary data, or a broken byte: text columns refuse it
        return DataError(describe_undecodable(path))
    text_types = {c: pa.string() for c in COLUMNS}
    integer = r"^\s*-?([0-9]{1,18}|0x[0-9a-fA-F]{1,15})\s*$"
    with TrackedFile(path) as source:
        for line, batch in read_batches(path, source, text_types, locate=False):
            for j, name in enumerate(DENSE):
                col = batch.column(1 + j)
                ok = pc.fill_null(pc.or_kleene(pc.is_null(col), pc.match_substring_regex(col, integer)), True)
                bad = np.flatnonzero(~ok.to_numpy(zero_copy_only=False))
                if len(bad):
                    value = col[int(bad[0])].as_py()
                    hint = (
                        " (NaN and infinity are not counts)"
                        if value.strip().lower().lstrip("+-") in ("nan", "inf", "infinity")
                        else ""
                    )
                    return DataError(
                        f"{path} line {line + int(bad[0])}: column {name} is {_show(value)}, "
                        f"expected an integer or empty{hint}"
                    )
    return DataError(f"{path}: not Criteo TSV ({str(err).splitlines()[0]})")
