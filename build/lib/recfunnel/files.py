"""Writing output so that it appears whole or not at all: a folder built under a temporary name and
renamed into place, a text file written beside its target and renamed over it.

A temporary folder's name says who made it, ``.<name>.tmp-<host>-<pid>-<random>``: a later run
writing the same output removes the folders of processes of this host that are gone (killed, say)
and says so in one line; it never touches those of a live process or of another host. Replacing
an existing folder swaps the two atomically (Linux ``renameat2(RENAME_EXCHANGE)``), so readers
never find the output missing; elsewhere the old folder is renamed away just before the new one
comes in.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

from recfunnel.errors import DataError

__all__ = ["atomic_output_dir", "write_text_atomic", "check_writable", "remove_dead_leftovers", "replace_dir"]

_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)-[0-9a-f]{8}$")


def _owned_name(out: Path, kind: str) -> Path:
    return out.parent / f".{out.name}.{kind}-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_dead_leftovers(out: str | Path, quiet: bool = False) -> list[Path]:
    """Remove the temporary folders and files of ``out`` that processes of this host left when they
    died; one line on stderr for each (unless ``quiet``). Returns what was removed."""
    out = Path(out)
    if not out.parent.is_dir():
        return []
    removed = []
    for path in out.parent.glob(f".{out.name}.*-*"):
        match = _LEFTOVER.match(path.name)
        if not match or match["name"] != out.name or match["host"] != _HOST or _alive(int(match["pid"])):
            continue
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        removed.append(path)
        if not quiet:
            print(
                f"recfunnel: removed {path} ({size / 1e6:,.1f} MB), left by process {match['pid']}, which is gone",
                file=sys.stderr,
            )
    return removed


def check_writable(out: str | Path) -> None:
    """Fail in one line, before any slow work, when ``out`` cannot be written (a read-only folder, a
    file in the way)."""
    out = Path(out)
    probe = _owned_name(out, "tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe.mkdir()
        probe.rmdir()
    except OSError as e:
        raise _unwritable(out, e) from None


def _unwritable(out: Path, err: OSError) -> DataError:
    blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    reason = f"{blocker} is a file, not a folder" if blocker is not None else (err.strerror or str(err))
    return DataError(f"{out}: cannot write there ({reason})")


@contextlib.contextmanager
def atomic_output_dir(out: str | Path, overwrite: bool = False, quiet: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``out``; on success it becomes ``out``, on failure it vanishes.

    An existing ``out`` is an error unless ``overwrite``; then it is replaced only once the new
    folder is complete, so a failed run never loses the old data, and readers never see it missing.
    Leftovers of dead processes that wrote ``out`` before are removed first (see the module).
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise DataError(f"{out}: already exists; pass --overwrite to replace it")
    remove_dead_leftovers(out, quiet=quiet)
    tmp = _owned_name(out, "tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as e:
        raise _unwritable(out, e) from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out)


def replace_dir(new: Path, out: Path) -> None:
    """``new`` becomes ``out``; an existing ``out`` is swapped out atomically, then removed."""
    if out.exists() and _exchange(new, out):
        shutil.rmtree(new, ignore_errors=True)  # ``new`` now holds the old folder
        return
    old = None
    if out.exists():
        old = _owned_name(out, "old")
        os.replace(out, old)
    os.replace(new, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 with RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # a C library without it (glibc < 2.28, musl)
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def write_text_atomic(path: str | Path, text: str) -> None:
    """``path`` holds ``text`` afterwards, or its old content if writing failed part-way."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
