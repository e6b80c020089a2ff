"""Reading a prepared dataset's shards back with Mosaic StreamingDataset, independent of the loader."""

from __future__ import annotations

from pathlib import Path

from recfunnel.data.format.read import read_split

__all__ = ["read_split", "assert_failed_cleanly"]


def assert_failed_cleanly(result: tuple[int, str, str], out: Path, *expected: str) -> str:
    """A `recfunnel prepare` call failed with exit 2 and ONE line naming ``expected``, and left
    neither ``out`` nor a ``.tmp-`` folder behind. Returns the message."""
    code, stdout, stderr = result
    assert code == 2, (code, stdout, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("recfunnel: error: "), stderr
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert not out.exists()
    assert not [p.name for p in out.parent.iterdir() if ".tmp-" in p.name]
    return lines[0]
