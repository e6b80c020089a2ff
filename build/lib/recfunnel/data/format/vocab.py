"""Raw categorical values -> contiguous indices, saved with the dataset.

Index 0 is the out-of-vocabulary bucket (unseen at inference, rarer than ``min_count``, missing).
Known values get 1..n in order of decreasing training frequency (ties: by value), so the raw id
0 is an ordinary id and popular items have small indices. For id spaces too big to hold, hashing
maps a value to ``1 + hash(value) % (buckets - 1)`` with pandas' stable, seeded SipHash.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recfunnel.data.format.manifest import OOV_INDEX

__all__ = ["Vocab", "hash_encode"]


@dataclass
class Vocab:
    """``values[i]`` has index ``i + 1``; ``counts[i]`` is its frequency where it was built."""

    name: str
    values: np.ndarray
    counts: np.ndarray

    @property
    def cardinality(self) -> int:
        """Number of indices, OOV bucket included."""
        return len(self.values) + 1

    @classmethod
    def build(
        cls,
        name: str,
        values: pd.Series | np.ndarray,
        *,
        min_count: int = 1,
        also: pd.Series | np.ndarray | None = None,
    ) -> Vocab:
        """Count ``values``; keep those seen ``min_count`` times. ``also`` adds values with count 0
        (e.g. catalog items never seen in training) after the counted ones."""
        counts = pd.Series(values).dropna().value_counts(sort=False)
        return cls.from_counts(name, counts, min_count=min_count, also=also)

    @classmethod
    def from_counts(
        cls, name: str, counts: pd.Series, *, min_count: int = 1, also: pd.Series | np.ndarray | None = None
    ) -> Vocab:
        """Like :meth:`build` from precomputed counts (index: value, data: count), e.g. from Spark."""
        counts = counts[counts >= min_count]
        frame = pd.DataFrame({"value": counts.index, "count": counts.to_numpy(np.int64)})
        frame = frame.sort_values(["count", "value"], ascending=[False, True], kind="stable")
        if also is not None:
            extra = pd.Series(also).dropna().drop_duplicates()
            extra = extra[~extra.isin(frame["value"])].sort_values(kind="stable")
            frame = pd.concat([frame, pd.DataFrame({"value": extra.to_numpy(), "count": 0})], ignore_index=True)
        return cls(name, frame["value"].to_numpy(), frame["count"].to_numpy(np.int64))

    def encode(self, values: pd.Series | np.ndarray) -> np.ndarray:
        """int64 indices; unseen and missing values -> 0."""
        index = pd.Index(self.values)
        codes = index.get_indexer(pd.Series(values).to_numpy())
        return np.where(codes < 0, OOV_INDEX, codes + 1).astype(np.int64)

    def decode(self, indices: np.ndarray) -> np.ndarray:
        """Raw values for indices >= 1 (index 0 has no raw value: returns None there)."""
        indices = np.asarray(indices)
        out = np.empty(len(indices), dtype=object)
        known = indices > 0
        out[known] = self.values[indices[known] - 1]
        out[~known] = None
        return out

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / f"{self.name}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.table(
            {
                "index": np.arange(1, self.cardinality, dtype=np.int64),
                "value": pa.array(self.values.tolist()),
                "count": self.counts,
            }
        )
        pq.write_table(table, path)
        return path

    @classmethod
    def load(cls, folder: str | Path, name: str) -> Vocab:
        table = pq.read_table(Path(folder) / f"{name}.parquet")
        return cls(name, table.column("value").to_numpy(zero_copy_only=False), table.column("count").to_numpy())


def hash_encode(values: pd.Series | np.ndarray, buckets: int) -> np.ndarray:
    """``1 + hash(str(value)) % (buckets - 1)``; missing values -> 0. Stable across runs and machines."""
    series = pd.Series(values)
    missing = series.isna().to_numpy()
    hashed = pd.util.hash_array(series.astype(str).to_numpy(dtype=object))
    out = (1 + hashed % np.uint64(buckets - 1)).astype(np.int64)
    out[missing] = OOV_INDEX
    return out
