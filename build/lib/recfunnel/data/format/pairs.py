"""The (user, item) pairs of an interactions dataset's splits (``pairs/<split>.parquet``), as numpy, and
the two facts recfunnel derives from them: which items a user has seen, and item popularity."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from recfunnel.errors import DataError

__all__ = ["Pairs", "read_pairs", "SPLIT_ORDER", "earlier_splits", "item_popularity"]

REQUIRED = ("user_index", "item_index", "label")


@dataclass
class Pairs:
    """One split's pairs, by user then time. Index 0 is the OOV bucket of users and items."""

    users: np.ndarray  # int64 (n,)
    items: np.ndarray  # int64 (n,)
    labels: np.ndarray  # float32 (n,) the first label
    ratings: np.ndarray | None  # float32 (n,), None when the dataset has no rating column
    timestamps: np.ndarray | None  # int64 (n,) seconds, None when the dataset has no timestamp

    def __len__(self) -> int:
        return len(self.users)


def read_pairs(folder: str | Path, split: str) -> Pairs:
    """``folder/pairs/<split>.parquet`` of a prepared interactions dataset; ``DataError`` naming
    the file when it is missing or lacks a column."""
    path = Path(folder) / "pairs" / f"{split}.parquet"
    if not path.is_file():
        have = sorted(p.stem for p in path.parent.glob("*.parquet")) if path.parent.is_dir() else []
        raise DataError(
            f"{path}: no such file (splits with pairs: {have or 'none'}; only interactions datasets have pairs/)"
        )
    table = pq.read_table(path)
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}, have {table.column_names}")

    def column(name: str, dtype: type) -> np.ndarray:
        return table.column(name).to_numpy().astype(dtype, copy=False)

    def optional(name: str, dtype: type) -> np.ndarray | None:
        return column(name, dtype) if name in table.column_names else None

    return Pairs(
        users=column("user_index", np.int64),
        items=column("item_index", np.int64),
        labels=column("label", np.float32),
        ratings=optional("rating", np.float32),
        timestamps=optional("timestamp", np.int64),
    )


SPLIT_ORDER = ("train", "val", "test")


def earlier_splits(split: str, present: Iterable[str]) -> list[str]:
    """The splits of ``present`` whose interactions count as *seen* by the time of ``split``: every
    split before it (train, then val), whatever their labels. Evaluation leaves a user's seen items
    out of the ranking, and the funnel never recommends them (a rated item is not news, liked or
    not); serving uses ``earlier_splits("test", ...)``, everything the model learned from."""
    if split not in SPLIT_ORDER:
        raise DataError(f"split {split!r}: expected one of {', '.join(SPLIT_ORDER)}")
    present = set(present)
    return [s for s in SPLIT_ORDER[: SPLIT_ORDER.index(split)] if s in present]


def item_popularity(pairs: Pairs, cardinality: int) -> np.ndarray:
    """Item popularity as recfunnel means it everywhere (the most-popular baseline and fallback,
    popularity-sampled negatives): each item index's count of positive pairs (label > 0).
    float64 (cardinality,); give the train split's pairs."""
    return np.bincount(pairs.items[pairs.labels > 0], minlength=cardinality).astype(np.float64)
