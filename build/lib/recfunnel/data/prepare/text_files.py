"""Raw text files as they come: gzipped or not (told by the content, not the name), and where
their text stops being valid, as a line number and a byte offset people can look up.

    with open_binary("day_0.gz") as f: ...          # decompressed as it is read, never to disk
    first_undecodable("ratings.csv")                 # (3002, 55195, b"\\xff") or None
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import BinaryIO

from recfunnel.errors import DataError

__all__ = [
    "GZIP_MAGIC",
    "GZIP_ERRORS",
    "is_gzip",
    "open_binary",
    "first_undecodable",
    "describe_undecodable",
    "gzip_error",
]

GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 1 << 20


def is_gzip(path: str | Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def open_binary(path: str | Path) -> BinaryIO:
    """``path`` opened for reading bytes, decompressed on the fly when it is gzip data."""
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")  # type: ignore[return-value]


def gzip_error(path: str | Path, err: BaseException) -> DataError:
    """A one-line error for gzip data that ends early or is damaged."""
    return DataError(f"{Path(path).name}: damaged gzip data ({str(err).strip() or type(err).__name__})")


GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


def first_undecodable(path: str | Path, encoding: str = "utf-8") -> tuple[int, int, bytes] | None:
    """(line, byte offset, the offending bytes) of the first bytes of ``path`` (decompressed) that are
    not ``encoding`` text, lines from 1, offsets from 0; None when the whole file decodes."""
    line, offset, carry = 1, 0, b""
    try:
        with open_binary(path) as f:
            while True:
                chunk = f.read(CHUNK)
                data = carry + chunk
                if not data:
                    return None
                try:
                    data.decode(encoding)
                    good, carry = data, b""
                except UnicodeDecodeError as e:
                    if chunk and e.reason == "unexpected end of data":  # a character cut by the chunk's end
                        good, carry = data[: e.start], data[e.start :]
                    else:
                        return line + data[: e.start].count(b"\n"), offset + e.start, data[e.start : e.end]
                line += good.count(b"\n")
                offset += len(good)
                if not chunk:
                    return None
    except GZIP_ERRORS as err:
        raise gzip_error(path, err) from None


def describe_undecodable(path: str | Path, encoding: str = "utf-8") -> str:
    """``ratings.csv line 3002 (byte 55,195): not utf-8 text (bytes ff)``, or a plainer message when
    the file decodes (the caller's decoder saw something else)."""
    name = Path(path).name
    found = first_undecodable(path, encoding)
    if found is None:
        return f"{name}: not {encoding} text"
    line, offset, bad = found
    return f"{name} line {line} (byte {offset:,}): not {encoding} text (bytes {bad.hex(' ')})"
