"""Reading a prepared dataset's shards back with Mosaic StreamingDataset, independent of the loader."""

from __future__ import annotations

from pathlib import Path

from recfunnel.data.block_stream import release_shared_memory
from recfunnel.data.rows import Rows
from recfunnel.data.schema import Manifest, load_manifest
from recfunnel.data.shards import decode_block
from recfunnel.data.streaming_compat import import_streaming


def read_split(folder: str | Path, split: str) -> tuple[Manifest, Rows]:
    """Every row of ``split`` in shard order, decoded from its MDS blocks."""
    streaming = import_streaming()
    manifest = load_manifest(folder)
    dataset = streaming.StreamingDataset(local=str(Path(folder) / split), remote=None, shuffle=False, batch_size=1)
    try:
        blocks = [decode_block(dataset[i], manifest, where=split) for i in range(len(dataset))]
    finally:
        release_shared_memory(dataset)  # before another dataset opens the same folder
    return manifest, Rows.concat(blocks)


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
