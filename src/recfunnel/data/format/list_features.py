"""What a ranker trained on a retriever's candidates knows of each candidate besides the user's and
the item's features: how the retriever scored it and where it put it, and how close it is to what
the user took before. One function computes each, for the training lists (``recfunnel train
--retriever``) and for the funnel at serving time, so the ranker sees the same numbers in both.

    features = list_features(scores, scale)             # one user's kept candidates, best first
    near = ItemNeighbours.from_weights(ease_weights, k) # item-to-item weights fitted on training pairs
    near.affinity(candidates, profile)                  # float32 (n,): summed over the user's items
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

__all__ = [
    "SCORE",
    "GAP",
    "RANK",
    "POPULARITY",
    "AFFINITY",
    "AFFINITY_FEATURES",
    "RANK_BUCKET",
    "affinity_features",
    "LIST_FEATURES",
    "rank_buckets",
    "NEIGHBOURS",
    "ItemNeighbours",
    "list_features",
    "popularity_feature",
]

SCORE = "retrieval_score"  # the retriever's score, standardised over the training lists' scores
GAP = "retrieval_gap"  # the score minus the list's best, on the same scale: how far behind the top
RANK = "retrieval_rank"  # log(1 + position) in the list of candidates, 0 = the retriever's best
POPULARITY = "item_popularity"  # an item feature: log(1 + the item's positive training pairs)
RANK_BUCKET = "retrieval_rank_bucket"  # sparse: 1 + floor(log2(1 + position)), the position's octave
AFFINITY = "profile_affinity"  # item-to-item weights summed over the items the user took (ItemNeighbours)
AFFINITY_Z = "profile_affinity_z"  # the same standardised within the list: comparable across profile sizes
AFFINITY_RANK = "profile_affinity_rank"  # log(1 + its place in the list by affinity), 0 = the closest
RECENT_AFFINITY = "recent_affinity"  # the same summed over the user's latest RECENT_ITEMS only: what they do now
RECENT_AFFINITY_Z = "recent_affinity_z"
RECENT_ITEMS = 5
AFFINITY_FEATURES = (AFFINITY, AFFINITY_Z, AFFINITY_RANK, RECENT_AFFINITY, RECENT_AFFINITY_Z)
LIST_FEATURES = (SCORE, GAP, RANK)
NEIGHBOURS = "neighbours.npz"  # the item-to-item weights, beside the ranker's model
DENSE_ITEMS = 4096  # up to this many items (64 MiB of float32), the weights are also held dense


def list_features(scores: np.ndarray, scale: tuple[float, float]) -> dict[str, np.ndarray]:
    """The list features of one user's candidates, ``scores`` in the retriever's order (best first);
    ``scale``: (mean, std) of the scores the ranker trained on (its manifest keeps them). The dense
    ones (float32) and ``RANK_BUCKET`` (int64; past the trained lists' length, clip it to the
    feature's cardinality - 1)."""
    mean, std = scale
    scores = np.asarray(scores, np.float32)
    top = scores[0] if len(scores) else np.float32(0)
    position = np.arange(len(scores))
    return {
        SCORE: ((scores - mean) / std).astype(np.float32),
        GAP: ((scores - top) / std).astype(np.float32),
        RANK: np.log1p(position.astype(np.float32)),
        RANK_BUCKET: 1 + np.floor(np.log2(1 + position)).astype(np.int64),  # clipped by the caller
    }


def affinity_features(
    neighbours: ItemNeighbours, candidates: np.ndarray, taken: np.ndarray, history: np.ndarray
) -> dict[str, np.ndarray]:
    """The affinity features of one user's candidates (item indices): to the user's profile (the
    items they ``taken`` positively, and their ``history``, the latest first) and to their latest
    RECENT_ITEMS. The raw sum grows with the size of the profile, so the list's own scale comes
    beside it."""
    history = np.asarray(history, np.int64)
    affinity = neighbours.affinity(candidates, np.concatenate([np.asarray(taken, np.int64), history]))
    recent = neighbours.affinity(candidates, history[:RECENT_ITEMS])
    place = np.empty(len(affinity), np.float32)
    place[np.argsort(-affinity, kind="stable")] = np.arange(len(affinity), dtype=np.float32)
    return {
        AFFINITY: affinity,
        AFFINITY_Z: _standardised(affinity),
        AFFINITY_RANK: np.log1p(place),
        RECENT_AFFINITY: recent,
        RECENT_AFFINITY_Z: _standardised(recent),
    }


def _standardised(values: np.ndarray) -> np.ndarray:
    """``values`` less their mean over their spread (zeros when they are all equal)."""
    spread = float(values.std()) if len(values) > 1 else 0.0
    return ((values - values.mean()) / spread if spread > 0 else np.zeros_like(values)).astype(np.float32)


def rank_buckets(list_rows: int) -> int:
    """The cardinality of ``RANK_BUCKET`` for lists of ``list_rows`` (index 0: unused, as OOV)."""
    return 2 + int(np.log2(list_rows))


def popularity_feature(counts: np.ndarray) -> np.ndarray:
    """float32 log(1 + count) of each item's positive training pairs."""
    return np.log1p(np.asarray(counts, np.float64)).astype(np.float32)


class ItemNeighbours:
    """Item-to-item weights ``M`` (an item the user took x a candidate), sparse: a candidate's
    affinity to a user is the sum of ``M`` over the items the user took positively before (their
    profile), the score item-based collaborative filtering ranks by. ``train --retriever`` fills it
    with EASE's weights (``from_weights``), or with the cosine of item co-occurrence (``cosine``)
    for catalogues too large for EASE; the ranker reads the affinity beside the retriever's score."""

    def __init__(self, matrix: sp.csr_matrix):
        self.matrix = sp.csr_matrix(matrix, dtype=np.float32)
        # a small catalogue's weights also held dense: a user's affinities are then one gather of
        # (profile x candidates), 10x faster than summing sparse rows (0.16 -> 0.02 ms a user on
        # MovieLens 100k), which is what the funnel pays per request
        self.dense = self.matrix.toarray() if self.matrix.shape[0] <= DENSE_ITEMS else None

    @classmethod
    def from_weights(cls, weights: np.ndarray, k: int) -> ItemNeighbours:
        """Dense (items, items) weights, each candidate's (column's) ``k`` largest in size kept."""
        weights = np.asarray(weights, np.float32)
        if k < weights.shape[0]:
            cut = -np.partition(-np.abs(weights), k - 1, axis=0)[k - 1]  # each column's k-th largest size
            weights = np.where(np.abs(weights) >= np.maximum(cut, np.finfo(np.float32).tiny), weights, 0.0)
        return cls(sp.csr_matrix(weights))

    @classmethod
    def cosine(cls, users: np.ndarray, items: np.ndarray, n_items: int, k: int) -> ItemNeighbours:
        """The cosine of item co-occurrence in the positive pairs (user and item indices): how often
        the same users took both, over the square root of each one's count; each item's ``k`` nearest."""
        n_users = int(users.max()) + 1 if len(users) else 1
        taken = sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=(n_users, n_items))
        taken.data[:] = 1.0  # a pair seen twice counts once
        counts = np.asarray(taken.sum(axis=0)).ravel()
        co = (taken.T @ taken).tocsr()
        co.setdiag(0)
        co.eliminate_zeros()
        norm = sp.diags(1.0 / np.sqrt(np.maximum(counts, 1.0)).astype(np.float32))
        return cls(_top_k_rows(sp.csr_matrix(norm @ co @ norm, dtype=np.float32), k))

    def affinity(self, candidates: np.ndarray, profile: np.ndarray) -> np.ndarray:
        """float32 (n,): the affinity of item indices ``candidates`` to a user whose profile is the
        item indices ``profile`` (each counted once)."""
        profile = np.unique(np.asarray(profile, np.int64))
        profile = profile[(profile > 0) & (profile < self.matrix.shape[0])]
        if not len(profile) or not len(candidates):
            return np.zeros(len(candidates), np.float32)
        candidates = np.asarray(candidates, np.int64)
        if self.dense is not None:
            return self.dense[np.ix_(profile, candidates)].sum(axis=0, dtype=np.float32)
        total = np.asarray(self.matrix[profile].sum(axis=0), np.float32).ravel()
        return total[candidates]

    def save(self, path: str | Path) -> None:
        sp.save_npz(str(path), self.matrix)

    @classmethod
    def load(cls, path: str | Path) -> ItemNeighbours:
        return cls(sp.load_npz(str(path)))


def _top_k_rows(matrix: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """``matrix`` with each row's ``k`` largest entries kept (ties: the lower column first)."""
    rows, cols, vals = [], [], []
    for r in range(matrix.shape[0]):
        lo, hi = matrix.indptr[r], matrix.indptr[r + 1]
        if hi == lo:
            continue
        data, index = matrix.data[lo:hi], matrix.indices[lo:hi]
        keep = np.lexsort((index, -data))[:k]
        rows.append(np.full(len(keep), r))
        cols.append(index[keep])
        vals.append(data[keep])
    if not rows:
        return sp.csr_matrix(matrix.shape, dtype=np.float32)
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=matrix.shape, dtype=np.float32
    )
