"""Re-ranking for diversity: maximal marginal relevance (Carbonell & Goldstein, 1998).

Each pick maximises ``lambda * relevance - (1 - lambda) * max similarity to the items already
picked``, with relevance the candidates' scores rescaled to [0, 1] and similarity the Jaccard
overlap of an item attribute's values (e.g. genres).
"""

from __future__ import annotations

from functools import cache

import numpy as np
from threadpoolctl import ThreadpoolController

__all__ = ["mmr", "mmr_many", "jaccard", "jaccard_of_members"]


@cache
def _blas() -> ThreadpoolController:
    return ThreadpoolController()


def jaccard(attributes: list[np.ndarray]) -> np.ndarray:
    """float32 (n, n): Jaccard similarity of every pair of value sets (0 where both are empty)."""
    return jaccard_of_members(_members(attributes))


def _members(attributes: list[np.ndarray]) -> np.ndarray:
    """float32 (n, distinct values): 0/1, row i marks the values of ``attributes[i]``."""
    n = len(attributes)
    lengths = np.array([len(a) for a in attributes])
    values = np.concatenate(attributes) if n and lengths.sum() else np.zeros(0, np.int64)
    _, columns = np.unique(values, return_inverse=True)
    member = np.zeros((n, int(columns.max()) + 1 if len(columns) else 1), np.float32)
    member[np.repeat(np.arange(n), lengths), columns] = 1.0  # duplicates within a set count once
    return member


def jaccard_of_members(member: np.ndarray) -> np.ndarray:
    """Jaccard similarity of rows of a 0/1 membership matrix (n, values), or of each of a stack of
    them (lists, n, values)."""
    sizes = member.sum(-1)
    # a few hundred rows: on one BLAS thread. OpenBLAS's others, once woken, spin for a while and
    # took the cores from the ranker beside them (rank 4-95 ms, re-rank 3.7 ms instead of 0.6, 0.1)
    with _blas().limit(limits=1, user_api="blas"):
        inter = member @ member.swapaxes(-1, -2)
    union = sizes[..., :, None] + sizes[..., None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def mmr(scores: np.ndarray, attributes: list[np.ndarray] | np.ndarray, k: int, lam: float) -> np.ndarray:
    """Positions of the ``k`` candidates MMR picks, in pick order. ``attributes``: each candidate's
    values, or their 0/1 membership matrix (n, values)."""
    member = attributes if isinstance(attributes, np.ndarray) else _members(attributes)
    return mmr_many([scores], [member], [k], lam)[0]


def mmr_many(scores: list[np.ndarray], members: list[np.ndarray], ks: list[int], lam: float) -> list[np.ndarray]:
    """``mmr`` of several candidate lists (each with its membership matrix and ``k``) at once: one
    similarity product and ``max(ks)`` vectorised picks for all, where a loop per list in Python
    took a third of a batched funnel's time. Shorter lists are padded with candidates never picked."""
    if not scores:
        return []
    ks = [min(k, len(s)) for k, s in zip(ks, scores)]
    relevance = [_relevance(s) for s in scores]
    lists, n = len(scores), max(len(s) for s in scores)
    value = np.full((lists, n), -np.inf, np.result_type(*relevance))
    member = np.zeros((lists, n, max(m.shape[1] for m in members)), np.float32)
    for u, (r, m) in enumerate(zip(relevance, members)):
        value[u, : len(r)] = lam * r
        member[u, : len(m), : m.shape[1]] = m
    similarity = jaccard_of_members(member)
    chosen = np.empty((lists, max(ks)), np.int64)
    max_sim = np.zeros((lists, n))
    every = np.arange(lists)
    for step in range(chosen.shape[1]):
        picks = np.argmax(value - (1 - lam) * max_sim, axis=1)
        chosen[:, step] = picks
        np.maximum(max_sim, similarity[every, picks], out=max_sim)
        value[every, picks] = -np.inf
    return [chosen[u, :k] for u, k in enumerate(ks)]


def _relevance(scores: np.ndarray) -> np.ndarray:
    """Scores rescaled to [0, 1] (all 1 when they are all equal)."""
    span = float(scores.max() - scores.min()) if len(scores) else 0.0
    return (scores - scores.min()) / span if span > 0 else np.ones(len(scores))
