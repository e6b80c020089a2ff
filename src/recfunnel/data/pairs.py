"""The (user, item) pairs of an interactions dataset's split, from ``pairs/<split>.parquet``, as numpy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from recfunnel.errors import DataError

__all__ = ["Pairs", "read_pairs"]

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
        raise DataError(f"{path}: no such file (splits with pairs: {have or 'none'}; "
                        "only interactions datasets have pairs/)")
    table = pq.read_table(path)
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}, have {table.column_names}")

    def column(name: str, dtype: type) -> np.ndarray | None:
        if name not in table.column_names:
            return None
        return table.column(name).to_numpy().astype(dtype, copy=False)

    return Pairs(users=column("user_index", np.int64), items=column("item_index", np.int64),
                 labels=column("label", np.float32), ratings=column("rating", np.float32),
                 timestamps=column("timestamp", np.int64))
