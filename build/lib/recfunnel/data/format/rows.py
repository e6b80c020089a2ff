"""Encoded rows in columnar numpy form: the unit that is written, shuffled and batched.

Multi-hot features are jagged: ``mh_lengths[:, j]`` says how many ids row ``i`` has for multi-hot
feature ``j``, and ``mh_values[j]`` holds those ids for all rows, concatenated in row order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Rows", "jagged_take"]


def jagged_take(
    lengths: np.ndarray, values: np.ndarray, idx: np.ndarray, starts: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``idx`` of a jagged array, vectorised.

    lengths: int (n,); values: (sum(lengths),); idx: int (m,); starts: int64 (n + 1,) offsets of
    the rows, if the caller keeps them -> (lengths[idx], their values).
    """
    lengths = lengths.astype(np.int64, copy=False)
    if starts is None:
        starts = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=starts[1:])
    new_lengths = lengths[idx]
    total = int(new_lengths.sum())
    if total == 0:
        return new_lengths, values[:0]
    new_starts = np.cumsum(new_lengths) - new_lengths
    # For output position p in row r: source = starts[idx[r]] + (p - new_starts[r]).
    shift = np.repeat(starts[idx] - new_starts, new_lengths)
    return new_lengths, values[np.arange(total, dtype=np.int64) + shift]


@dataclass
class Rows:
    dense: np.ndarray  # float32 (n, D)
    sparse: np.ndarray  # int64 (n, S) single-hot indices
    mh_lengths: np.ndarray  # int32 (n, M)
    mh_values: list[np.ndarray]  # M arrays of int64, each (sum of that column of mh_lengths,)
    labels: np.ndarray  # float32 (n, L)

    def __post_init__(self) -> None:
        n = len(self.labels)
        assert self.dense.shape[0] == n and self.sparse.shape[0] == n and self.mh_lengths.shape[0] == n
        assert len(self.mh_values) == self.mh_lengths.shape[1]

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def empty(cls, n_dense: int, n_sparse: int, n_multi: int, n_labels: int) -> Rows:
        return cls(
            dense=np.zeros((0, n_dense), np.float32),
            sparse=np.zeros((0, n_sparse), np.int64),
            mh_lengths=np.zeros((0, n_multi), np.int32),
            mh_values=[np.zeros(0, np.int64) for _ in range(n_multi)],
            labels=np.zeros((0, n_labels), np.float32),
        )

    def take(self, idx: np.ndarray) -> Rows:
        """The rows at ``idx`` (any order, repeats allowed)."""
        mh_lengths = self.mh_lengths[idx]
        mh_values = [jagged_take(self.mh_lengths[:, j], v, idx)[1] for j, v in enumerate(self.mh_values)]
        return Rows(self.dense[idx], self.sparse[idx], mh_lengths, mh_values, self.labels[idx])

    def slice(self, start: int, stop: int) -> Rows:
        """Rows ``start:stop`` without gathering (views where possible)."""
        mh_values = []
        for j, v in enumerate(self.mh_values):
            col = self.mh_lengths[:, j].astype(np.int64)
            lo, hi = int(col[:start].sum()), int(col[:stop].sum())
            mh_values.append(v[lo:hi])
        return Rows(
            self.dense[start:stop],
            self.sparse[start:stop],
            self.mh_lengths[start:stop],
            mh_values,
            self.labels[start:stop],
        )

    @staticmethod
    def concat(parts: list[Rows]) -> Rows:
        if len(parts) == 1:
            return parts[0]
        return Rows(
            dense=np.concatenate([p.dense for p in parts]),
            sparse=np.concatenate([p.sparse for p in parts]),
            mh_lengths=np.concatenate([p.mh_lengths for p in parts]),
            mh_values=[np.concatenate([p.mh_values[j] for p in parts]) for j in range(parts[0].mh_lengths.shape[1])],
            labels=np.concatenate([p.labels for p in parts]),
        )
