"""Synthetic user-item interactions with planted tastes, written through the interactions pipeline.

Users and items get latent vectors ``u``, ``v`` (dim ``dim``, so that ``u . v`` has variance 1) and
items a log-popularity ``b ~ N(0, 1)``. A user with ``c`` interactions picks ``c`` distinct items
with Plackett-Luce probabilities ``softmax(sharpness * u . v + popularity * b)`` (Gumbel top-k), at
uniformly random times over a year, so each user's latest rows are fresh draws from the same taste.
Ratings follow taste: ``clip(round(3.6 + 1.1 * z), 1, 5)``, ``z`` the standardised ``u . v + N(0, 0.5^2)``
of the sampled rows (about 54% of ratings are >= 4, as in MovieLens).

Features: users' ``segment`` (argmax of the first 4 latent dims), items' ``category`` (argmax of the
first 8), ``tags`` (multi-hot: dims where ``v`` is clearly positive) and ``popularity`` (dense, ``b``).
``manifest.extra`` records the generator's parameters and, on the test split, the recall@10 of
the planted model (rank by the true score, train items excluded) beside a popularity baseline.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recfunnel.data.format.manifest import Manifest
from recfunnel.data.format.pairs import earlier_splits, item_popularity, read_pairs
from recfunnel.data.format.shards import check_output
from recfunnel.data.format.vocab import Vocab
from recfunnel.data.prepare.columns import Table
from recfunnel.data.prepare.dataset import prepare_interaction_dataset
from recfunnel.data.prepare.history import HISTORY_LENGTH
from recfunnel.data.prepare.labels import LabelSpec
from recfunnel.data.prepare.splits import SplitSpec
from recfunnel.data.prepare.tables import Feature, InteractionData
from recfunnel.errors import ConfigError

__all__ = [
    "Tastes",
    "make_tastes",
    "sample_interactions",
    "planted_successors",
    "prepare_synthetic_interactions",
    "planted_recall",
    "chain_share",
]

T0 = 1_600_000_000  # first timestamp, seconds
SPAN = 365 * 24 * 3600
CELLS_PER_CHUNK = 1 << 22  # users x items scores held at once
FEATURES = [
    Feature("segment", "categorical", "user"),
    Feature("category", "categorical", "item"),
    Feature("tags", "multi_hot", "item"),
    Feature("popularity", "dense", "item"),
]


class Tastes:
    """The planted model: ``score(u, i) = sharpness * U[u] . V[i] + popularity * b[i]``."""

    def __init__(self, U: np.ndarray, V: np.ndarray, b: np.ndarray, sharpness: float, popularity: float):
        self.U, self.V, self.b = U, V, b  # float64 (users, dim), (items, dim), (items,)
        self.sharpness, self.popularity = sharpness, popularity

    def scores(self, users: np.ndarray, items: np.ndarray | None = None) -> np.ndarray:
        """float64 (len(users), items): true scores of ``users`` against all (or ``items``) items."""
        V, b = (self.V, self.b) if items is None else (self.V[items], self.b[items])
        return self.sharpness * (self.U[users] @ V.T) + self.popularity * b


def make_tastes(
    users: int, items: int, dim: int, rng: np.random.Generator, sharpness: float = 3.0, popularity: float = 1.0
) -> Tastes:
    scale = dim**-0.25  # entries N(0, dim^-1/2): a dot product then has variance 1
    return Tastes(
        rng.normal(0, scale, (users, dim)),
        rng.normal(0, scale, (items, dim)),
        rng.normal(0, 1, items),
        sharpness,
        popularity,
    )


def sample_interactions(
    t: Tastes, rows: int, rng: np.random.Generator, markov: float = 0.0, successor: np.ndarray | None = None
) -> pd.DataFrame:
    """``rows`` interactions (user_id, item_id, rating, timestamp), sorted by time; no repeated pair.
    With ``markov`` > 0, each user's next item is ``successor[last item]`` with that probability
    (when the user does not have it yet), else a draw from the user's taste (:func:`_sequences`)."""
    n_users, n_items = len(t.U), len(t.V)
    counts = _user_counts(rng, rows, n_users, n_items)
    users = np.repeat(np.arange(n_users), counts)
    if markov > 0:
        if successor is None:
            raise ValueError("markov > 0 needs the planted successor of every item")
        return _rated(t, users, *_sequences(t, counts, successor, markov, rng), rng)
    items = np.empty(rows, np.int64)
    chunk = max(1, CELLS_PER_CHUNK // n_items)
    pos = 0
    for lo in range(0, n_users, chunk):
        c = counts[lo : lo + chunk]
        k = int(c.max(initial=0))
        if k == 0:
            continue
        noisy = t.scores(np.arange(lo, lo + len(c))) + rng.gumbel(size=(len(c), n_items))
        top = np.argpartition(-noisy, k - 1, axis=1)[:, :k]  # Gumbel top-k = sampling without replacement
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(noisy, top, axis=1), axis=1), axis=1)
        picked = top[np.arange(k)[None, :] < c[:, None]]  # row-major: user by user
        items[pos : pos + len(picked)] = picked
        pos += len(picked)
    stamps = T0 + np.sort(rng.integers(0, SPAN, rows))[rng.permutation(rows)]
    return _rated(t, users, items, stamps, rng)


def _rated(
    t: Tastes, users: np.ndarray, items: np.ndarray, stamps: np.ndarray, rng: np.random.Generator
) -> pd.DataFrame:
    """The interactions frame, rated by taste, sorted by time."""
    taste = np.einsum("nd,nd->n", t.U[users], t.V[items]) + rng.normal(0, 0.5, len(users))
    z = (taste - taste.mean()) / (taste.std() or 1.0)  # chosen items are liked: centre, so ~54% rate >= 4
    rating = np.clip(np.round(3.6 + 1.1 * z), 1, 5)
    frame = pd.DataFrame({"user_id": users, "item_id": items, "rating": rating, "timestamp": stamps})
    return frame.sort_values("timestamp", kind="stable").reset_index(drop=True)


def planted_successors(items: int, rng: np.random.Generator) -> np.ndarray:
    """int64 (items,): each item's planted next item, one cycle through the whole catalogue (no
    chain ends early, none loops back on itself)."""
    order = rng.permutation(items)
    successor = np.empty(items, np.int64)
    successor[order] = np.roll(order, -1)
    return successor


def _sequences(
    t: Tastes, counts: np.ndarray, successor: np.ndarray, markov: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(items, timestamps) of every user's sequence, user by user: each step follows the chain with
    probability ``markov``, else takes the user's next-best item by taste (Gumbel order); the
    user's times are sorted draws over the year, in sequence order."""
    items = np.empty(int(counts.sum()), np.int64)
    stamps = np.empty(len(items), np.int64)
    pos = 0
    for user, count in enumerate(counts.tolist()):
        taste = np.argsort(-(t.scores(np.array([user]))[0] + rng.gumbel(size=len(t.V))))
        follow = rng.random(count) < markov
        used: set[int] = set()
        ahead, last = 0, -1
        for step in range(count):
            item = int(successor[last]) if last >= 0 and follow[step] else -1
            if item < 0 or item in used:
                while int(taste[ahead]) in used:
                    ahead += 1
                item = int(taste[ahead])
            used.add(item)
            items[pos + step], last = item, item
        stamps[pos : pos + count] = T0 + np.sort(rng.integers(0, SPAN, count))
        pos += count
    return items, stamps


def _user_counts(rng: np.random.Generator, rows: int, users: int, items: int) -> np.ndarray:
    """Rows per user, int64 (users,): log-normal activity, at most ``items`` each, summing to ``rows``."""
    p = rng.lognormal(0, 0.5, users)
    counts = rng.multinomial(rows, p / p.sum())
    while (over := np.maximum(counts - items, 0)).sum():
        counts -= over
        room = items - counts
        counts += rng.multinomial(int(over.sum()), room / room.sum())
    return counts


def _entity_tables(t: Tastes) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Users (user_id, segment) and items (item_id, title, category, tags, popularity)."""
    dim = t.U.shape[1]
    users = pd.DataFrame({"user_id": np.arange(len(t.U)), "segment": np.argmax(t.U[:, : min(dim, 4)], axis=1)})
    strong = t.V > 0.5 * dim**-0.25
    rows, cols = np.nonzero(strong)
    tags = pd.Series([f"t{k}" for k in range(dim)], dtype=object).to_numpy()[cols]
    tag_lists = pd.Series(tags).groupby(rows).agg(list).reindex(range(len(t.V))).to_numpy()
    items = pd.DataFrame(
        {
            "item_id": np.arange(len(t.V)),
            "title": [f"item {i}" for i in range(len(t.V))],
            "category": np.argmax(t.V[:, : min(dim, 8)], axis=1),
            "tags": tag_lists,
            "popularity": t.b,
        }
    )
    return users, items


def prepare_synthetic_interactions(
    rows: int,
    out: str | Path,
    *,
    users: int | None = None,
    items: int | None = None,
    seed: int = 42,
    dim: int = 8,
    sharpness: float = 3.0,
    popularity: float = 1.0,
    label: str = "auto",
    threshold: float = 4.0,
    user_mean_on: str = "train",
    split: str = "temporal",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    leave_last: int = 1,
    history: int = HISTORY_LENGTH,
    markov: float = 0.0,
    block_rows: int = 4096,
    compression: str | None = None,
    overwrite: bool = False,
    quiet: bool = False,
) -> Manifest:
    """Generate ``rows`` interactions of ``users`` x ``items`` (defaults: rows/50, rows/100, at least
    10, and enough users that every one has at most half the items) with planted tastes and write
    them as an interactions dataset to ``out``."""
    items = items or max(10, rows // 100)
    users = users or max(10, rows // 50, -(-2 * rows // items))
    if not 0.0 <= markov <= 1.0:
        raise ConfigError(f"--markov: {markov}, expected a probability in [0, 1]")
    if rows < 1 or dim < 1 or rows > users * items:
        raise ConfigError(
            f"synthetic interactions: rows={rows}, users={users}, items={items}, dim={dim}; "
            "need rows >= 1, dim >= 1 and rows <= users * items (no repeated pair)"
        )
    check_output(out, overwrite, block_rows)
    labels = LabelSpec(rule=label, threshold=threshold, user_mean_on=user_mean_on)
    spec = SplitSpec(
        kind=split, val_fraction=val_fraction, test_fraction=test_fraction, leave_last=leave_last, seed=seed
    )
    rng = np.random.default_rng(seed)
    tastes = make_tastes(users, items, dim, rng, sharpness, popularity)
    successor = planted_successors(items, rng) if markov > 0 else None
    inter = sample_interactions(tastes, rows, rng, markov, successor)
    user_table, item_table = _entity_tables(tastes)
    params = {
        "rows": rows,
        "users": users,
        "items": items,
        "dim": dim,
        "sharpness": sharpness,
        "popularity": popularity,
        "markov": markov,
        "seed": seed,
    }
    data = InteractionData(
        _table("interactions", inter),
        _table("users", user_table),
        _table("items", item_table),
        FEATURES,
        source={"kind": "synthetic", "generator": "interactions", **params},
        rating_range=(1, 5),
    )

    def evaluate(folder: Path, manifest: Manifest) -> dict[str, Any]:
        chain = {} if successor is None else chain_share(folder, successor)
        return {"generator": params, **planted_recall(folder, tastes, seed=seed), **chain}

    return prepare_interaction_dataset(
        data,
        out,
        labels=labels,
        split=spec,
        block_rows=block_rows,
        compression=compression,
        overwrite=overwrite,
        quiet=quiet,
        evaluate=evaluate,
        history=history,
    )


def _table(name: str, frame: pd.DataFrame) -> Table:
    frame.index = frame.index + 1
    return Table(name, frame, unit="row")


def planted_recall(folder: Path, tastes: Tastes, *, k: int = 10, max_users: int = 2000, seed: int = 0) -> dict:
    """Recall@k on the test split of the planted model and of item popularity, each user's seen
    items excluded (the same definitions as training's evaluation: ``data.format.pairs``).

    Recall of a user = test positives in the top k / test positives; averaged over up to
    ``max_users`` test users with a positive. Skipped (empty dict) without a test split.
    """
    splits = sorted(p.stem for p in (folder / "pairs").glob("*.parquet"))
    if "test" not in splits:
        return {}
    test = read_pairs(folder, "test")
    keep = test.labels > 0
    relevant = pd.DataFrame({"user_index": test.users[keep], "item_index": test.items[keep]})
    earlier = [read_pairs(folder, split) for split in earlier_splits("test", splits)]
    seen = pd.DataFrame(
        {
            "user_index": np.concatenate([p.users for p in earlier]),
            "item_index": np.concatenate([p.items for p in earlier]),
        }
    )
    raw_user = Vocab.load(folder / "vocab", "user_id").values.astype(np.int64)  # index i+1 -> raw id
    raw_item = Vocab.load(folder / "vocab", "item_id").values.astype(np.int64)
    chosen = np.unique(relevant["user_index"].to_numpy())
    if len(chosen) > max_users:
        chosen = np.sort(np.random.default_rng(seed).choice(chosen, max_users, replace=False))
    n_items = len(raw_item) + 1
    popularity = item_popularity(read_pairs(folder, "train"), n_items)
    scorers = {
        "truth": lambda us: np.c_[np.full(len(us), -np.inf), tastes.scores(raw_user[us - 1], raw_item)],
        "popularity": lambda us: np.tile(popularity, (len(us), 1)),
    }
    seen = seen[seen["user_index"].isin(chosen)]
    relevant = relevant[relevant["user_index"].isin(chosen)]
    out: dict[str, Any] = {}
    for name, score in scorers.items():
        out[f"{name}_recall_at_{k}"] = round(_recall(score, chosen, seen, relevant, k, n_items), 4)
    out["recall_users"] = int(len(chosen))
    return out


def chain_share(folder: Path, successor: np.ndarray) -> dict[str, Any]:
    """The share of test rows whose item is the planted successor of the user's previous item
    (of an earlier split): the rows that followed the chain."""
    splits = sorted(p.stem for p in (folder / "pairs").glob("*.parquet"))
    if "test" not in splits:
        return {}
    test = read_pairs(folder, "test")
    earlier = [read_pairs(folder, split) for split in earlier_splits("test", splits)]
    raw_item = Vocab.load(folder / "vocab", "item_id").values.astype(np.int64)  # index i+1 -> raw id
    before = pd.DataFrame(
        {
            "user": np.concatenate([p.users for p in earlier]),
            "item": np.concatenate([p.items for p in earlier]),
            "t": np.concatenate([p.timestamps for p in earlier]),
        }
    )
    previous = before.sort_values("t", kind="stable").groupby("user")["item"].last().reindex(test.users).to_numpy()
    known = ~np.isnan(previous)
    predicted = successor[raw_item[previous[known].astype(np.int64) - 1]]
    hits = predicted == raw_item[test.items[known] - 1]
    return {"chain_next_share": round(float(hits.mean()) if len(hits) else 0.0, 4)}


def _recall(
    score: Callable[[np.ndarray], np.ndarray],
    users: np.ndarray,
    seen: pd.DataFrame,
    relevant: pd.DataFrame,
    k: int,
    n_items: int,
) -> float:
    """Mean over ``users`` of |top-k ∩ relevant| / |relevant|; ``score(user_indices)`` gives
    (len, n_items) scores with column = item index (0 = OOV, never recommended)."""
    per_user = []
    chunk = max(1, CELLS_PER_CHUNK // n_items)
    for lo in range(0, len(users), chunk):
        us = users[lo : lo + chunk]
        row = pd.Index(us)
        scores = score(us)
        scores[:, 0] = -np.inf
        mine = seen[seen["user_index"].isin(us)]
        scores[row.get_indexer(mine["user_index"]), mine["item_index"].to_numpy()] = -np.inf
        kk = min(k, scores.shape[1])
        hit = np.zeros(scores.shape, dtype=bool)
        np.put_along_axis(hit, np.argpartition(-scores, kk - 1, axis=1)[:, :kk], True, axis=1)
        rel = relevant[relevant["user_index"].isin(us)]
        r = row.get_indexer(rel["user_index"])
        hits = np.bincount(r, weights=hit[r, rel["item_index"].to_numpy()], minlength=len(us))
        totals = np.bincount(r, minlength=len(us))
        per_user.append(hits[totals > 0] / totals[totals > 0])
    values = np.concatenate(per_user) if per_user else np.zeros(0)
    return float(values.mean()) if len(values) else 0.0
