"""What a model knows of who did what, kept in its folder so that serving never needs the dataset.

    interactions = load_interactions(model_folder, manifest)
    interactions.seen(user_index)   # int64 item indices the user interacted with, ascending
    interactions.popularity         # float64 (item cardinality,): see data.format.pairs.item_popularity

``interactions.parquet`` holds every pair of the splits the model learned from (train, and val,
which chose its epoch: :func:`~recfunnel.data.format.pairs.earlier_splits` of "test"), any label,
sorted by user then item: ``user_index``, ``item_index``, ``label`` (the first label), ``split``
and, when the dataset has them, ``timestamp``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recfunnel.data.format.manifest import Manifest
from recfunnel.data.format.pairs import Pairs, earlier_splits, item_popularity, read_pairs
from recfunnel.errors import DataError

__all__ = ["INTERACTIONS", "Interactions", "save_interactions", "load_interactions"]

INTERACTIONS = "interactions.parquet"


@dataclass
class Interactions:
    pairs: Pairs  # sorted by user, then item
    indptr: np.ndarray  # int64 (user cardinality + 1,): pairs of user u are pairs[indptr[u]:indptr[u + 1]]
    popularity: np.ndarray  # float64 (item cardinality,), from the train pairs

    def seen(self, user_index: int) -> np.ndarray:
        """Item indices the user interacted with (empty for unknown users and the OOV index 0)."""
        if not 0 < user_index < len(self.indptr) - 1:
            return np.zeros(0, np.int64)
        return self.pairs.items[self.indptr[user_index] : self.indptr[user_index + 1]]

    def taken(self, user_index: int) -> np.ndarray:
        """Item indices the user interacted with positively (first label > 0)."""
        if not 0 < user_index < len(self.indptr) - 1:
            return np.zeros(0, np.int64)
        lo, hi = self.indptr[user_index], self.indptr[user_index + 1]
        return self.pairs.items[lo:hi][self.pairs.labels[lo:hi] > 0]

    @classmethod
    def of(cls, pairs: Pairs, is_train: np.ndarray, manifest: Manifest) -> Interactions:
        """From pairs in any order (sorted here); is_train: bool (n,), the pairs of the train split."""
        order = np.lexsort((pairs.items, pairs.users))
        pairs = Pairs(
            pairs.users[order],
            pairs.items[order],
            pairs.labels[order],
            None,
            None if pairs.timestamps is None else pairs.timestamps[order],
        )
        users = manifest.feature(manifest.roles["user"]).cardinality
        items = manifest.feature(manifest.roles["item"]).cardinality
        indptr = np.zeros(users + 1, np.int64)
        np.cumsum(np.bincount(pairs.users, minlength=users), out=indptr[1:])
        train = is_train[order]
        popularity = item_popularity(
            Pairs(pairs.users[train], pairs.items[train], pairs.labels[train], None, None), items
        )
        return cls(pairs, indptr, popularity)


def save_interactions(folder: str | Path, data: str | Path, manifest: Manifest) -> Interactions:
    """Write ``folder/interactions.parquet`` from the dataset ``data``'s pairs (an interactions
    dataset with a train split)."""
    parts = [(name, read_pairs(data, name)) for name in earlier_splits("test", manifest.splits)]
    pairs = Pairs(
        np.concatenate([p.users for _, p in parts]),
        np.concatenate([p.items for _, p in parts]),
        np.concatenate([p.labels for _, p in parts]),
        None,
        _timestamps([p for _, p in parts]),
    )
    names = [name for name, _ in parts]
    codes = np.concatenate([np.full(len(p), i, np.int32) for i, (_, p) in enumerate(parts)])
    order = np.lexsort((pairs.items, pairs.users))
    columns = {
        "user_index": pairs.users[order],
        "item_index": pairs.items[order],
        "label": pairs.labels[order],
        "split": pa.DictionaryArray.from_arrays(codes[order], names),
    }
    if pairs.timestamps is not None:
        columns["timestamp"] = pairs.timestamps[order]
    pq.write_table(pa.table(columns), Path(folder) / INTERACTIONS)
    return Interactions.of(pairs, codes == names.index("train"), manifest)


def _timestamps(parts: list[Pairs]) -> np.ndarray | None:
    if any(p.timestamps is None for p in parts):
        return None
    return np.concatenate([p.timestamps for p in parts if p.timestamps is not None])


def load_interactions(folder: str | Path, manifest: Manifest) -> Interactions:
    """The interactions kept in the model folder ``folder``."""
    path = Path(folder) / INTERACTIONS
    if not path.is_file():
        raise DataError(
            f"{path}: missing; the model folder holds no record of its training interactions "
            f"(saved by an older recfunnel?); train the model again"
        )
    table = pq.read_table(path)
    missing = [c for c in ("user_index", "item_index", "label", "split") if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}, have {table.column_names}")

    def column(name: str, dtype: type) -> np.ndarray:
        return table.column(name).to_numpy().astype(dtype, copy=False)

    timestamps = column("timestamp", np.int64) if "timestamp" in table.column_names else None
    pairs = Pairs(
        column("user_index", np.int64), column("item_index", np.int64), column("label", np.float32), None, timestamps
    )
    is_train = pc.equal(table.column("split").cast(pa.string()), "train").to_numpy(zero_copy_only=False)
    return Interactions.of(pairs, np.asarray(is_train, bool), manifest)
