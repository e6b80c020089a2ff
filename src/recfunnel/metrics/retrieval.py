"""Top-K retrieval metrics over the full item catalogue: recall, NDCG, hit rate, MRR, accuracy.

A scorer ``score_users(user_idx) -> scores`` maps int64 user indices (b,) to a float tensor
(b, n_items + 1) over item indices 0..n_items. Column 0 is the OOV bucket and is never
recommended. Every item is ranked (no sampled negatives).

Rank rule: the rank of a relevant item (0 = first) is the number of *other* candidate items whose
score is >= its score, so ties are broken pessimistically (the relevant item goes after every item
tied with it). A relevant item is a hit at K when its rank < K. Excluded items and the OOV column
score -inf and are never hits, even when the user has fewer than K candidates.

Exclusion is exactly as given: a (user, item) pair in ``exclude_users / exclude_items`` (usually
the user's training items) is removed from the ranking, even when that item is also one of the
user's test items; such a test item then counts as a miss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

__all__ = ["evaluate_topk", "tfrs_accuracy", "relative_change_interval", "ScoreFn"]

ScoreFn = Callable[[np.ndarray], torch.Tensor]
CELLS = 1 << 24  # scores held per batch (users x items), so 100k+ item catalogues fit in memory


def evaluate_topk(
    score_users: ScoreFn,
    *,
    test_users: np.ndarray,
    test_items: np.ndarray,
    n_items: int,
    exclude_users: np.ndarray | None = None,
    exclude_items: np.ndarray | None = None,
    ks: Sequence[int] = (10, 20, 100),
    batch_users: int = 1024,
    by_user: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """Full-ranking metrics of ``score_users`` on the test pairs ``(test_users, test_items)`` int (m,).

    The relevant set of a user is its distinct test items; users with no test pair are not
    evaluated. Per user, averaged over users: ``recall_at_K`` = hits in the top K / relevant,
    ``ndcg_at_K`` (binary gains, ideal DCG of min(K, relevant) hits), ``hit_rate_at_K`` (>= 1 hit),
    ``mrr`` (1 / (1 + rank) of the best-ranked relevant item). Per test pair (micro average, repeated
    pairs counted each time): ``accuracy_at_K`` = share of pairs whose item is in the user's top K,
    TensorFlow Recommenders' factorized top-K categorical accuracy. Also ``users`` and ``pairs``.

    ``exclude_users / exclude_items`` int (e,): pairs whose scores are set to -inf before ranking.
    Users are scored ``batch_users`` at a time (fewer when n_items is large). ``by_user``, when
    given, is filled with each evaluated user's ``ndcg_at_K`` (float64 (u,)) beside ``users`` (their
    indices, ascending): what a confidence interval over users needs.
    """
    users = np.asarray(test_users, np.int64)
    items = np.asarray(test_items, np.int64)
    ks = sorted({int(k) for k in ks})
    if len(users) != len(items) or len(users) == 0:
        raise ValueError(f"test_users ({len(users)}) and test_items ({len(items)}) must be equal, non-empty lengths")
    if not ks or ks[0] < 1:
        raise ValueError(f"ks: {ks}, expected integers >= 1")
    if items.min() < 0 or items.max() > n_items:
        raise ValueError(f"test_items: indices must be in [0, {n_items}], got [{items.min()}, {items.max()}]")
    if (exclude_users is None) != (exclude_items is None):
        raise ValueError("exclude_users and exclude_items go together: give both or neither")
    width = n_items + 1
    # Distinct (user, item) pairs, sorted by user; `repeats` counts each one's test pairs.
    keys, repeats = np.unique(users * width + items, return_counts=True)
    pair_user, pair_item = keys // width, keys % width
    eval_users, user_start = np.unique(pair_user, return_index=True)
    user_stop = np.r_[user_start[1:], len(keys)]
    excluded = None
    if exclude_users is not None:
        ex_users, ex_items = np.asarray(exclude_users, np.int64), np.asarray(exclude_items, np.int64)
        if len(ex_users) != len(ex_items) or (len(ex_items) and (ex_items.min() < 0 or ex_items.max() > n_items)):
            raise ValueError(
                f"exclude_users ({len(ex_users)}) and exclude_items ({len(ex_items)}) must have equal "
                f"lengths, items in [0, {n_items}]"
            )
        ex = np.unique(ex_users * width + ex_items)
        excluded = (ex // width, ex % width)  # sorted by user
    batch = max(1, min(batch_users, CELLS // width))
    sums = _Sums(ks)
    for lo in range(0, len(eval_users), batch):
        u = eval_users[lo : lo + batch]
        p_lo, p_hi = user_start[lo], user_stop[lo + len(u) - 1]
        row = np.repeat(np.arange(len(u)), user_stop[lo : lo + len(u)] - user_start[lo : lo + len(u)])
        scores = _scores(score_users, u, width, excluded)
        rank = _ranks(scores, row, pair_item[p_lo:p_hi])
        sums.add(rank.cpu().numpy(), row, len(u), repeats[p_lo:p_hi])
    if by_user is not None:
        by_user["users"] = eval_users
        by_user.update({f"ndcg_at_{k}": np.concatenate(v) for k, v in sums.ndcg_by_user.items()})
    return sums.result()


def tfrs_accuracy(
    score_users: ScoreFn,
    test_users: np.ndarray,
    test_items: np.ndarray,
    n_items: int,
    ks: Sequence[int] = (1, 5, 10, 50, 100),
) -> dict[str, float]:
    """TensorFlow Recommenders' figure: factorized top-K accuracy with nothing excluded (a user's
    training items stay in the ranking). Returns ``{"accuracy_at_K_no_exclusion": ...}``."""
    got = evaluate_topk(score_users, test_users=test_users, test_items=test_items, n_items=n_items, ks=ks)
    return {f"accuracy_at_{k}_no_exclusion": got[f"accuracy_at_{k}"] for k in sorted(set(ks))}


def _scores(
    score_users: ScoreFn, u: np.ndarray, width: int, excluded: tuple[np.ndarray, np.ndarray] | None
) -> torch.Tensor:
    """A checked copy of ``score_users(u)`` (b, width) with the OOV column and the ``excluded``
    (users, items) pairs of these users at -inf."""
    scores = score_users(u)
    if tuple(scores.shape) != (len(u), width):
        raise ValueError(f"score_users returned shape {tuple(scores.shape)}, expected ({len(u)}, {width})")
    if not torch.is_floating_point(scores):
        raise ValueError(f"score_users returned {scores.dtype}, expected a float tensor")
    scores = scores.detach().clone()
    if torch.isnan(scores).any():
        raise ValueError("score_users returned NaN scores")
    scores[:, 0] = -math.inf
    if excluded is not None:
        ex_user, ex_item = excluded
        lo, hi = np.searchsorted(ex_user, [u[0], u[-1] + 1])
        eu, ei = ex_user[lo:hi], ex_item[lo:hi]
        at = np.searchsorted(u, eu)
        mine = u[np.minimum(at, len(u) - 1)] == eu
        scores[_t(at[mine], scores), _t(ei[mine], scores)] = -math.inf
    return scores


def _t(x: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.int64, device=like.device)


def _ranks(scores: torch.Tensor, row: np.ndarray, item: np.ndarray) -> torch.Tensor:
    """Pessimistic 0-based rank (float64, inf if excluded) of each pair (``row``, ``item``) (p,) in
    its row of ``scores`` (b, width): the number of other items scoring >= it."""
    b, width = scores.shape
    target = scores[_t(row, scores), _t(item, scores)]  # (p,)
    # Pad each row's targets to (b, longest) so one batched searchsorted answers all of them.
    counts = np.bincount(row, minlength=b)
    slot = np.arange(len(row)) - np.repeat(np.cumsum(counts) - counts, counts)
    padded = torch.full((b, max(int(counts.max()), 1)), math.inf, dtype=scores.dtype, device=scores.device)
    padded[_t(row, scores), _t(slot, scores)] = target
    ascending = torch.sort(scores, dim=1).values
    at_least = width - torch.searchsorted(ascending, padded, right=False)  # items scoring >= target
    rank = (at_least[_t(row, scores), _t(slot, scores)] - 1).to(torch.float64)
    return torch.where(torch.isneginf(target), math.inf, rank)


class _Sums:
    """Running per-user and per-pair sums, turned into means by :meth:`result`."""

    def __init__(self, ks: list[int]):
        self.ks = ks
        self.users = self.pairs = 0
        self.recall = dict.fromkeys(ks, 0.0)
        self.ndcg = dict.fromkeys(ks, 0.0)
        self.hit = dict.fromkeys(ks, 0.0)
        self.acc = dict.fromkeys(ks, 0.0)
        self.mrr = 0.0
        self.ndcg_by_user: dict[int, list[np.ndarray]] = {k: [] for k in ks}
        self.ideal = np.cumsum(1.0 / np.log2(np.arange(ks[-1]) + 2.0))  # ideal DCG of 1..max(ks) hits

    def add(self, rank: np.ndarray, row: np.ndarray, b: int, repeats: np.ndarray) -> None:
        """rank float64 (p,) of each distinct pair, row int (p,) its user in the batch of ``b``."""
        relevant = np.bincount(row, minlength=b)
        gain = np.where(np.isfinite(rank), 1.0 / np.log2(np.minimum(rank, 1e18) + 2.0), 0.0)
        for k in self.ks:
            hit = rank < k
            hits = np.bincount(row, weights=hit, minlength=b)
            self.recall[k] += float((hits / relevant).sum())
            self.hit[k] += float((hits > 0).sum())
            dcg = np.bincount(row, weights=np.where(hit, gain, 0.0), minlength=b)
            self.ndcg_by_user[k].append(dcg / self.ideal[np.minimum(relevant, k) - 1])
            self.ndcg[k] += float(self.ndcg_by_user[k][-1].sum())
            self.acc[k] += float((hit * repeats).sum())
        best = np.full(b, np.inf)
        np.minimum.at(best, row, rank)
        self.mrr += float((1.0 / (best + 1.0)).sum())
        self.users += b
        self.pairs += int(repeats.sum())

    def result(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for k in self.ks:
            out[f"recall_at_{k}"] = self.recall[k] / self.users
            out[f"ndcg_at_{k}"] = self.ndcg[k] / self.users
            out[f"hit_rate_at_{k}"] = self.hit[k] / self.users
            out[f"accuracy_at_{k}"] = self.acc[k] / self.pairs
        out["mrr"] = self.mrr / self.users
        out["users"] = float(self.users)
        out["pairs"] = float(self.pairs)
        return out


def relative_change_interval(
    ours: np.ndarray, theirs: np.ndarray, draws: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """The ``level`` interval of mean(ours) / mean(theirs) - 1 by a paired bootstrap over users:
    ``ours`` and ``theirs`` are one metric per user (float (u,)), the same users in the same order.
    Resampling users, not seeds: it says how much of a gap the evaluated users alone could make."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    if ours.shape != theirs.shape or not len(ours):
        raise ValueError(f"ours {ours.shape} and theirs {theirs.shape}: equal, non-empty")
    pick = np.random.default_rng(seed).integers(0, len(ours), (draws, len(ours)))
    ratio = ours[pick].mean(1) / np.maximum(theirs[pick].mean(1), 1e-12) - 1.0
    low, high = np.quantile(ratio, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)
