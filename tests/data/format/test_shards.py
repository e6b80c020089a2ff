"""Block shards hold what was written, or say where they do not: a flipped byte anywhere in a block
and an id outside its table stop reading with a one-line CorruptDataError naming shard and block."""

import numpy as np
import pytest

from recfunnel.data.format.manifest import load_manifest
from recfunnel.data.format.shards import decode_block, encode_block
from recfunnel.data.stream.loader import StreamingBatchLoader
from recfunnel.errors import CorruptDataError, DataError
from tests.data.fixtures import tiny_rows, write_tiny_dataset


@pytest.fixture
def tiny(tmp_path):
    out = tmp_path / "tiny"
    write_tiny_dataset(out, {"train": 2000}, block_rows=64)
    return out


def flip_middle(path, n=16):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + n] = bytes(b ^ 0xFF for b in data[middle : middle + n])
    path.write_bytes(bytes(data))  # the same size: only a content check can tell


@pytest.mark.parametrize("workers", [0, 2])
def test_a_flipped_byte_stops_the_loader_naming_shard_and_block(tiny, workers):
    shard = next((tiny / "train").glob("shard.*.mds"))
    flip_middle(shard)
    with pytest.raises(CorruptDataError) as caught:
        with StreamingBatchLoader(tiny, "train", batch_size=100, num_workers=workers) as loader:
            for _ in loader:
                pass
    message = str(caught.value)
    assert str(shard) in message and "train block" in message and "corrupt" in message
    assert "\n" not in message and "Traceback" not in message  # one line, also from a worker process


def test_an_id_outside_its_table_is_corrupt_data(tiny):
    manifest = load_manifest(tiny)
    rows = tiny_rows(10)
    rows.sparse[3, 1] = manifest.single_hot[1].cardinality  # one past the table's last row
    with pytest.raises(CorruptDataError, match=r"block 7: feature 'small' holds id 10, outside its table of 10 rows"):
        decode_block(encode_block(7, rows), manifest)
    rows = tiny_rows(10)
    rows.mh_values[0][:] = -1
    with pytest.raises(CorruptDataError, match="feature 'tags' holds id -1"):
        decode_block(encode_block(7, rows), manifest)


def test_blocks_written_before_checksums_still_read(tiny):
    manifest = load_manifest(tiny)
    sample = encode_block(3, tiny_rows(10))
    del sample["checksum"]
    assert np.array_equal(decode_block(sample, manifest).sparse, tiny_rows(10).sparse)
    sample["rows"] = 11
    with pytest.raises(DataError, match="has .* bytes, expected"):
        decode_block(sample, manifest)
