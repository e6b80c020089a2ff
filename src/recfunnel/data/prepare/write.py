"""Writing an encoded interaction dataset: vocabularies, users/items/pairs Parquet tables, MDS shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from recfunnel.data.format.catalog import before_val_column
from recfunnel.data.format.manifest import Label, SplitInfo
from recfunnel.data.format.shards import SplitWriter
from recfunnel.data.format.vocab import Vocab
from recfunnel.data.prepare.encode import Block, Encoded
from recfunnel.data.prepare.history import HISTORY, HISTORY_BEFORE_VAL
from recfunnel.data.prepare.splits import SPLITS, SplitSpec, user_time_order
from recfunnel.data.prepare.tables import Checked

__all__ = ["write_dataset", "CHUNK_ROWS"]

CHUNK_ROWS = 1 << 20  # rows encoded at once while writing shards: bounds memory on 30M-row inputs


def write_dataset(
    folder: Path,
    enc: Encoded,
    checked: Checked,
    labels: np.ndarray,
    label_list: list[Label],
    codes: np.ndarray,
    split: SplitSpec,
    block_rows: int,
    compression: str | None,
    quiet: bool,
) -> dict[str, SplitInfo]:
    """Write everything but manifest.json into ``folder``; return each split's :class:`SplitInfo`."""
    for vocab in enc.vocabs:
        vocab.save(folder / "vocab")
    users = _entity_table("user", enc.user_vocab, enc.users)
    if enc.history is not None:  # each user's latest history: what serving (and the test split) knows
        everyone = np.arange(1, enc.user_vocab.cardinality)
        users = users.append_column(HISTORY, _lists(*enc.history.latest(everyone)))
        # and what the validation split's moment knew: the training rows only
        users = users.append_column(HISTORY_BEFORE_VAL, _lists(*enc.history.latest(everyone, through_val=False)))
    if enc.age is not None:  # serving asks about the end of the known data; the validation split its own moment
        name = enc.age.feature.name  # row 0 of the arrays is the OOV user, not in the table
        users = users.append_column(name, pa.array(enc.age.user_now[1:]))
        users = users.append_column(before_val_column(name), pa.array(enc.age.user_now_at_val[1:]))
    pq.write_table(users, folder / "users.parquet")
    pq.write_table(_entity_table("item", enc.item_vocab, enc.items, enc.titles), folder / "items.parquet")
    infos = {}
    by_user = user_time_order(enc.user_index, checked.timestamp)
    for code, name in enumerate(SPLITS):
        if name not in split.names:
            continue
        _write_pairs(
            folder / "pairs" / f"{name}.parquet", enc, checked, labels, label_list, by_user[codes[by_user] == code]
        )
        idx = np.flatnonzero(codes == code)
        # A full seeded permutation: blocks mix users and items even though the input is sorted.
        idx = idx[np.random.default_rng([split.seed, code]).permutation(len(idx))]
        infos[name] = _write_shards(folder / name, enc, labels, idx, block_rows, compression, quiet=quiet)
    return infos


def _write_shards(
    folder: Path,
    enc: Encoded,
    labels: np.ndarray,
    idx: np.ndarray,
    block_rows: int,
    compression: str | None,
    quiet: bool,
) -> SplitInfo:
    # idx is already a full permutation: the writer's own shuffle buffer would add nothing.
    writer = SplitWriter(folder, block_rows, shuffle_seed=None, compression=compression)
    starts = range(0, len(idx), CHUNK_ROWS)
    bar = tqdm(
        starts, desc=f"writing {folder.name}", unit="chunk", disable=quiet or len(idx) <= CHUNK_ROWS, leave=False
    )
    for start in bar:
        writer.write(enc.rows(idx[start : start + CHUNK_ROWS], labels))
    return writer.finish()


def _write_pairs(
    path: Path, enc: Encoded, checked: Checked, labels: np.ndarray, label_list: list[Label], idx: np.ndarray
) -> None:
    """One split's (user, item) pairs with labels and timestamps; idx: its rows, by user then time."""
    cols = {"user_index": enc.user_index[idx], "item_index": enc.item_index[idx]}
    for j, label in enumerate(label_list):
        cols[label.name] = labels[idx, j]
    if checked.timestamp is not None:
        cols["timestamp"] = checked.timestamp[idx]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path)


def _entity_table(key: str, vocab: Vocab, block: Block, titles: np.ndarray | None = None) -> pa.Table:
    """Every user (or item) in index order: ``<key>_index``, ``<key>_id`` raw, [title], encoded features."""
    n = vocab.cardinality - 1
    rows = block.rows.slice(1, n + 1)  # row 0 is the OOV bucket, not an entity
    cols: dict[str, pa.Array | np.ndarray] = {
        f"{key}_index": np.arange(1, n + 1, dtype=np.int64),
        f"{key}_id": pa.array(vocab.values.tolist()),
    }
    if titles is not None:
        cols["title"] = pa.array(titles[1:].tolist(), type=pa.string(), from_pandas=True)
    for j, single in enumerate(block.single):
        cols[single.name] = rows.sparse[:, j]
    for j, multi in enumerate(block.multi):
        cols[multi.name] = _lists(rows.mh_lengths[:, j], rows.mh_values[j])
    for j, dense in enumerate(block.dense):
        cols[dense.name] = rows.dense[:, j]
    return pa.table(cols)


def _lists(lengths: np.ndarray, values: np.ndarray) -> pa.ListArray:
    """A jagged column (lengths (n,), values) as an Arrow list column of int64."""
    offsets = np.zeros(len(lengths) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.int64()))
