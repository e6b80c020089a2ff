"""A window of blocks held in memory, and batches gathered from it.

Rows are never permuted in place: a window keeps its blocks concatenated (sparse ids
feature-major, as KeyedJaggedTensor wants them) plus an emission ``order``, and each batch is one
gather by index. Batches that straddle two windows are gathered from both and joined.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from recfunnel.data.format.manifest import Manifest
from recfunnel.data.format.rows import Rows, jagged_take

__all__ = ["Window", "BatchParts", "join", "to_tensors"]

BatchParts = dict[str, Any]  # dense (n, D), sparse [(sparse_t, idx)], mh_lengths (n, M), mh_values [M], labels, weights


@dataclass
class Window:
    dense: np.ndarray  # float32 (N, D)
    sparse_t: np.ndarray  # int64 (S, N)
    mh_lengths: np.ndarray  # int32 (N, M)
    mh_starts: list[np.ndarray]  # M arrays int64 (N + 1,): offsets into mh_values
    mh_values: list[np.ndarray]
    labels: np.ndarray  # float32 (N, L)
    weights: np.ndarray  # float32 (N,)
    order: np.ndarray  # int64 (rows still to emit,): indices into the window, in emission order

    @classmethod
    def of(cls, blocks: list[Rows], weights: np.ndarray) -> Window:
        m = blocks[0].mh_lengths.shape[1]
        mh_lengths = np.concatenate([b.mh_lengths for b in blocks])
        starts = []
        for j in range(m):
            s = np.zeros(len(mh_lengths) + 1, np.int64)
            np.cumsum(mh_lengths[:, j], out=s[1:])
            starts.append(s)
        return cls(
            dense=np.concatenate([b.dense for b in blocks]),
            sparse_t=np.ascontiguousarray(np.concatenate([b.sparse.T for b in blocks], axis=1)),
            mh_lengths=mh_lengths,
            mh_starts=starts,
            mh_values=[np.concatenate([b.mh_values[j] for b in blocks]) for j in range(m)],
            labels=np.concatenate([b.labels for b in blocks]),
            weights=weights,
            order=np.arange(len(mh_lengths), dtype=np.int64),
        )

    @classmethod
    def padding(cls, manifest: Manifest, n: int) -> Window:
        """``n`` all-zero rows (index 0, empty multi-hot lists) of weight 0."""
        m = len(manifest.multi_hot)
        return cls(
            dense=np.zeros((n, len(manifest.dense)), np.float32),
            sparse_t=np.zeros((len(manifest.single_hot), n), np.int64),
            mh_lengths=np.zeros((n, m), np.int32),
            mh_starts=[np.zeros(n + 1, np.int64) for _ in range(m)],
            mh_values=[np.zeros(0, np.int64) for _ in range(m)],
            labels=np.zeros((n, len(manifest.labels)), np.float32),
            weights=np.zeros(n, np.float32),
            order=np.arange(n, dtype=np.int64),
        )

    def __len__(self) -> int:
        """Rows still to emit."""
        return len(self.order)

    def take(self, n: int) -> BatchParts:
        """Gather the next ``n`` rows in emission order and advance."""
        idx, self.order = self.order[:n], self.order[n:]
        mh_lengths = np.take(self.mh_lengths, idx, axis=0)
        mh_values = [
            jagged_take(self.mh_lengths[:, j], values, idx, starts)[1]
            for j, (starts, values) in enumerate(zip(self.mh_starts, self.mh_values))
        ]
        # np.take is faster than fancy indexing for these row gathers. Sparse ids, the bulk of a
        # batch, are gathered later straight into the KeyedJaggedTensor values (see to_tensors).
        return {
            "dense": np.take(self.dense, idx, axis=0),
            "sparse": [(self.sparse_t, idx)],
            "mh_lengths": mh_lengths,
            "mh_values": mh_values,
            "labels": np.take(self.labels, idx, axis=0),
            "weights": np.take(self.weights, idx),
        }


def join(parts: list[BatchParts]) -> BatchParts:
    if len(parts) == 1:
        return parts[0]
    return {
        "dense": np.concatenate([p["dense"] for p in parts]),
        "sparse": [pair for p in parts for pair in p["sparse"]],
        "mh_lengths": np.concatenate([p["mh_lengths"] for p in parts]),
        "mh_values": [np.concatenate(vs) for vs in zip(*[p["mh_values"] for p in parts])],
        "labels": np.concatenate([p["labels"] for p in parts]),
        "weights": np.concatenate([p["weights"] for p in parts]),
    }


def to_tensors(parts: BatchParts, worker: int) -> dict[str, Any]:
    """KeyedJaggedTensor-ready tensors: values/lengths feature-major, single-hot features first."""
    n = len(parts["labels"])
    n_single = parts["sparse"][0][0].shape[0]
    mh_lengths, mh_values = parts["mh_lengths"], parts["mh_values"]
    values = np.empty(n_single * n + sum(len(v) for v in mh_values), np.int64)
    single = values[: n_single * n].reshape(n_single, n)
    if len(parts["sparse"]) == 1:  # gather straight into place: no intermediate copy
        src, idx = parts["sparse"][0]
        np.take(src, idx, axis=1, out=single, mode="clip")
    else:
        start = 0
        for src, idx in parts["sparse"]:
            single[:, start : start + len(idx)] = np.take(src, idx, axis=1)
            start += len(idx)
    pos = n_single * n
    for v in mh_values:
        values[pos : pos + len(v)] = v
        pos += len(v)
    lengths = np.empty(n_single * n + mh_lengths.size, np.int32)
    lengths[: n_single * n] = 1
    lengths[n_single * n :] = mh_lengths.T.reshape(-1)
    return {
        "worker": worker,
        "dense": torch.from_numpy(parts["dense"]),
        "values": torch.from_numpy(values),
        "lengths": torch.from_numpy(lengths),
        "labels": torch.from_numpy(parts["labels"]),
        "weights": torch.from_numpy(parts["weights"]),
        "rows": n,
    }
