"""The lists a two-stage ranker learns from: for each user, the retriever's top N candidates on
interactions the retriever was not trained on, labelled by what the user then did.

    recfunnel train --model dlrm --data DATA --retriever TWO_TOWER_RUN --out RUN
    -> RUN/candidates/   a dataset folder (manifest, shards, catalogues) the ranker trains on

Why the validation split: a ranker must learn to sort the candidates the retriever gives at serving
time, for interactions it has not seen. Candidates for the retriever's own training rows would be
the wrong question: it has learnt those rows, so their items sit at the top with high scores, and a
ranker fitted there learns to trust the score more than it deserves. The interactions after the
retriever's training data (the val split: later in time for the temporal and time splits) are
exactly what serving meets, so they are the ranker's training data (time-based rather than
out-of-fold: one retriever, no refits). Each user is one list, as the funnel sees them at the end of
the training period: features and history as of then, the user's training items excluded, the
retriever's top N (``ranking.candidates``, by default the funnel's 200), label 1 for the items the
user interacted with positively in val. The users are split by a seeded draw: ``ranking.val_users``
of them choose the ranker's epoch, the rest train it. The test lists are built the same way, after
train + val, excluding both (what the funnel does for test users), so the ranker's test metrics are
the funnel's re-ranking of the same candidates.

A list is ``N`` consecutive rows in the retriever's order, and blocks hold whole lists; the loader
shuffles whole lists (``manifest.extra["list_rows"]``), so a batch is made of whole lists and a
listwise loss sees each list entire. Users whose list holds no positive are left out (nothing to
learn or measure there); their share is reported as the retriever's coverage.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
import torch
from tqdm import tqdm

from recfunnel.baselines.ease import EASE, MAX_ITEMS
from recfunnel.config import RunConfig
from recfunnel.data.format.catalog import Catalog
from recfunnel.data.format.list_features import (
    AFFINITY_FEATURES,
    LIST_FEATURES,
    NEIGHBOURS,
    POPULARITY,
    RANK_BUCKET,
    ItemNeighbours,
    affinity_features,
    list_features,
    popularity_feature,
    rank_buckets,
)
from recfunnel.data.format.manifest import DenseFeature, Label, Manifest, SparseFeature, load_manifest
from recfunnel.data.format.pairs import earlier_splits, item_popularity, read_pairs
from recfunnel.data.format.rows import Rows, jagged_take
from recfunnel.data.format.shards import SplitWriter
from recfunnel.errors import ConfigError
from recfunnel.files import atomic_output_dir
from recfunnel.retrieval.embeddings import tower_embeddings
from recfunnel.retrieval.index import normalise
from recfunnel.store.model import Trained, load_trained, model_digest

__all__ = [
    "CANDIDATES",
    "check_source",
    "ensure_candidates",
    "build_candidates",
    "list_manifest",
    "pair_rows",
    "describe",
]

CANDIDATES = "candidates"  # the folder in the ranker's run folder
LISTS_VERSION = 6  # of what a list holds: a folder of another version is built again
NEIGHBOURS_K = 1000  # item-to-item weights kept per candidate item
USERS_AT_ONCE = 1024  # users scored against every item in one matmul: (1024, items) floats
SCALE_USERS = 1024  # the first users (in list order) whose scores set the score's scale


def check_source(source: Manifest, data: str | Path) -> None:
    """The lists need an interactions dataset with a val split: what the retriever did not learn."""
    if source.kind != "interactions":
        raise ConfigError(f"--retriever: needs a user-item interactions dataset, {data} is {source.kind!r}")
    if "val" not in source.splits or source.splits["val"].rows == 0:
        raise ConfigError(
            f"--retriever: {data} has no val split; the ranker learns from the retriever's candidates on "
            f"interactions it was not trained on (prepare the data with a val split)"
        )


def _key(config: RunConfig, data: str | Path) -> dict[str, Any]:
    """What the lists depend on: a folder built from the same key is reused (a resumed run)."""
    retriever = Path(config.ranking.retriever)
    return {
        "retriever": str(retriever),
        "retriever_digest": model_digest(retriever),  # the weights' hash, without loading them
        "data": str(data),
        "data_manifest_sha256": hashlib.sha256((Path(data) / "manifest.json").read_bytes()).hexdigest(),
        "candidates": config.ranking.candidates,
        "val_users": config.ranking.val_users,
        "seed": config.train.seed,
        "version": LISTS_VERSION,
    }


def ensure_candidates(config: RunConfig, data: str | Path, out: Path, quiet: bool = False) -> Path:
    """``out/candidates``, built unless a folder built from the same inputs is already there."""
    folder = out / CANDIDATES
    key = _key(config, data)
    if (folder / "manifest.json").is_file():
        built = load_manifest(folder).extra.get("candidates", {})
        if built.get("key") == key:
            if not quiet:
                print(f"recfunnel: {folder}: candidate lists reused (same retriever and data)", file=sys.stderr)
            return folder
    build_candidates(
        config.ranking.retriever,
        data,
        folder,
        n=config.ranking.candidates,
        val_users=config.ranking.val_users,
        seed=config.train.seed,
        quiet=quiet,
        key=key,
    )
    return folder


def _retriever(run: str | Path, source: Manifest, data: str | Path) -> Trained:
    trained = load_trained(run)  # a folder that holds no model: its one-line error
    if not trained.config.is_retrieval:
        raise ConfigError(f"ranking.retriever: {run} is a {trained.kind} run; give a two-tower run")
    for role in ("user", "item"):
        name = source.roles.get(role)
        theirs = {f.name: f.cardinality for f in trained.manifest.sparse}.get(name)
        if theirs != source.feature(name).cardinality:
            raise ConfigError(
                f"ranking.retriever: {run} was trained on another dataset than {data} "
                f"({name}: {theirs} ids there, {source.feature(name).cardinality} here)"
            )
    return trained


def build_candidates(
    retriever: str | Path,
    data: str | Path,
    folder: str | Path,
    *,
    n: int = 200,
    val_users: float = 0.1,
    seed: int = 42,
    quiet: bool = False,
    key: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the candidate-list dataset of ``data`` under ``retriever`` into ``folder`` (atomically);
    returns what it cost and holds (also in its manifest's ``extra["candidates"]``)."""
    data, folder = Path(data), Path(folder)
    source = load_manifest(data)
    check_source(source, data)
    trained = _retriever(retriever, source, data)
    start = time.perf_counter()
    splits = [s for s in ("val", "test") if s in source.splits]
    # the users as of each split: their history holds what was known at its moment
    user_catalog = {s: tower_embeddings(trained, "user", as_of=s) for s in splits}
    item_catalog, item_vectors = tower_embeddings(trained, "item")
    cosine = trained.config.model.score == "cosine"  # as the index scores them
    user_vectors = {s: normalise(v) if cosine else v for s, (_, v) in user_catalog.items()}
    item_vectors = normalise(item_vectors) if cosine else item_vectors
    users = {s: Catalog.load(data, source, "user", as_of=s) for s in splits}
    items = Catalog.load(data, source, "item")
    if not np.array_equal(items.index, item_catalog.index) or any(
        not np.array_equal(users[s].index, c.index) for s, (c, _) in user_catalog.items()
    ):
        raise ConfigError(f"ranking.retriever: {retriever}'s catalogues differ from {data}'s; train it on {data}")
    train = read_pairs(data, "train")
    counts = item_popularity(train, items.cardinality)
    keep = train.labels > 0
    neighbours = _neighbours(train.users[keep], train.items[keep], source)
    n = min(n, len(items))
    manifest = list_manifest(source, n)
    lists = _Lists(source, data, user_vectors, item_vectors, users, items, n)
    summary: dict[str, Any] = {"list_rows": n, "splits": {}}
    scale: tuple[float, float] | None = None
    with atomic_output_dir(folder, overwrite=True) as tmp:
        writers = {s: SplitWriter(tmp / s, _block_rows(n)) for s in ("train", "val", "test") if s in _wanted(source)}
        for split in splits:
            order = lists.users_of(split, seed)
            held = _held_out(order, val_users, seed) if split == "val" else np.zeros(len(order), bool)
            kept = {"users": len(order), "lists": 0, "positives": 0}
            bar = tqdm(total=len(order), desc=f"candidates ({split})", unit="user", disable=quiet, leave=False)
            for lo in range(0, len(order), USERS_AT_ONCE):
                chunk = order[lo : lo + USERS_AT_ONCE]
                item_rows, scores, labels = lists.top(split, chunk)
                if scale is None:
                    scale = _scale(scores[:SCALE_USERS])
                # a list needs a positive to learn from, and n unseen items (else -inf scores)
                has = labels.any(axis=1) & np.isfinite(scores).all(axis=1)
                kept["lists"] += int(has.sum())
                kept["positives"] += int(labels[has].sum())
                for target, mask in _targets(split, held[lo : lo + USERS_AT_ONCE], has):
                    if mask.any():
                        writers[target].write(
                            pair_rows(
                                manifest,
                                users[split],
                                items,
                                counts,
                                chunk[mask],
                                item_rows[mask],
                                scores[mask],
                                labels[mask],
                                scale,
                                neighbours,
                                lists.profiles(split),
                            )
                        )
                bar.update(len(chunk))
            bar.close()
            kept["coverage"] = round(kept["lists"] / max(1, kept["users"]), 4)
            summary["splits"][split] = kept
        infos = {s: w.finish() for s, w in writers.items()}
        seconds = time.perf_counter() - start
        scored = sum(k["users"] for k in summary["splits"].values()) * n
        summary.update(
            seconds=round(seconds, 2),
            candidates_per_s=round(scored / max(seconds, 1e-9), 1),
            scale=list(scale or (0.0, 1.0)),
            retriever=str(retriever),
            source=str(data),
            key=key or {},
        )
        manifest = dataclasses.replace(
            manifest, splits=infos, extra={**source.extra, "list_rows": n, "candidates": summary}
        )
        _catalogues(data, tmp, counts)
        neighbours.save(tmp / NEIGHBOURS)
        manifest.save(tmp)
    return summary


def _neighbours(users: np.ndarray, items: np.ndarray, source: Manifest) -> ItemNeighbours:
    """Item-to-item weights from the positive training pairs: EASE's (the strongest item-based
    model, exact up to its catalogue limit), else the cosine of co-occurrence, sparse."""
    n_users = source.feature(source.roles["user"]).cardinality - 1
    n_items = source.feature(source.roles["item"]).cardinality - 1
    if n_items <= MAX_ITEMS:
        weights = EASE().fit(users, items, n_users, n_items).weights
        assert weights is not None
        return ItemNeighbours.from_weights(weights.numpy(), NEIGHBOURS_K)
    return ItemNeighbours.cosine(users, items, n_items + 1, NEIGHBOURS_K)


def _wanted(source: Manifest) -> list[str]:
    return ["train", "val"] + (["test"] if "test" in source.splits else [])


def _targets(split: str, held: np.ndarray, has: np.ndarray) -> list[tuple[str, np.ndarray]]:
    if split == "test":
        return [("test", has)]
    return [("train", has & ~held), ("val", has & held)]


def _held_out(users: np.ndarray, share: float, seed: int) -> np.ndarray:
    """A seeded draw of ``share`` of ``users`` (at least one when there are two or more)."""
    rng = np.random.default_rng([seed, 104729])
    count = max(1, round(len(users) * share)) if len(users) > 1 else 0
    held = np.zeros(len(users), bool)
    held[rng.choice(len(users), count, replace=False)] = True
    return held


def _block_rows(n: int) -> int:
    """Rows per block: whole lists, about 4096 rows."""
    return n * max(1, 4096 // n)


def _scale(scores: np.ndarray) -> tuple[float, float]:
    finite = scores[np.isfinite(scores)]
    std = float(finite.std()) if len(finite) > 1 else 1.0
    return float(finite.mean()) if len(finite) else 0.0, std if std > 0 else 1.0


def list_manifest(source: Manifest, n: int) -> Manifest:
    """``source``'s features plus the list features, the item popularity and the candidate's
    affinity to the user's profile; one binary label."""
    roles = dict(source.roles)
    roles["item_features"] = [*source.roles.get("item_features", []), POPULARITY]
    roles["list_features"] = [*LIST_FEATURES, *AFFINITY_FEATURES, RANK_BUCKET]
    first = source.labels[0]
    return dataclasses.replace(
        source,
        dense=[
            *source.dense,
            # as list_features computes them from the retriever's scores, not from a raw column
            *(DenseFeature(name, "none") for name in LIST_FEATURES),
            DenseFeature(POPULARITY, "log1p"),
            *(DenseFeature(name, "none") for name in AFFINITY_FEATURES),
        ],
        sparse=[*source.sparse, SparseFeature(RANK_BUCKET, rank_buckets(n), encoding="index")],
        labels=[Label(first.name, "binary", f"a positive interaction later ({first.rule})")],
        block_rows=_block_rows(n),
        roles=roles,
    )


def _catalogues(data: Path, folder: Path, counts: np.ndarray) -> None:
    """The source's vocabularies, users and pairs; its items with their popularity."""
    for name in ("vocab", "pairs"):
        if (data / name).is_dir():
            shutil.copytree(data / name, folder / name)
    shutil.copy2(data / "users.parquet", folder / "users.parquet")
    items = pq.read_table(data / "items.parquet")
    index = items.column("item_index").to_numpy()
    items = items.append_column(POPULARITY, pa.array(popularity_feature(counts[index])))
    pq.write_table(items, folder / "items.parquet")


class _Lists:
    """Each user's top ``n`` unseen items under the retriever, and their labels in a split."""

    def __init__(self, manifest, data, user_vectors, item_vectors, users: dict[str, Catalog], items: Catalog, n: int):
        self.manifest, self.data, self.n = manifest, data, n
        self.user_vectors = {s: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for s, v in user_vectors.items()}
        self.item_vectors = torch.from_numpy(np.ascontiguousarray(item_vectors, np.float32))
        self.users, self.items = users, items
        self._pairs: dict[str, Any] = {}
        self._seen: dict[str, np.ndarray] = {}
        self._positive: dict[str, np.ndarray] = {}
        self._profiles: dict[str, sp.csr_matrix] = {}

    def pairs(self, split: str):
        if split not in self._pairs:
            self._pairs[split] = read_pairs(self.data, split)
        return self._pairs[split]

    def profiles(self, split: str) -> sp.csr_matrix:
        """(user cardinality, item cardinality) 0/1: the items each user took positively before ``split``."""
        if split not in self._profiles:
            before = [self.pairs(s) for s in earlier_splits(split, self.manifest.splits)]
            users = np.concatenate([p.users[p.labels > 0] for p in before])
            items = np.concatenate([p.items[p.labels > 0] for p in before])
            shape = (self.users["val"].cardinality, self.items.cardinality)
            self._profiles[split] = sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=shape)
        return self._profiles[split]

    def users_of(self, split: str, seed: int) -> np.ndarray:
        """User indices with a positive pair in ``split``, in a seeded order (lists are written so)."""
        pairs = self.pairs(split)
        found = np.unique(pairs.users[pairs.labels > 0])
        found = found[self.users[split].positions_of(found) >= 0]
        return found[np.random.default_rng([seed, len(split)]).permutation(len(found))]

    def _keys(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(user * items + item) keys of what users saw before ``split``, and of its positives."""
        if split not in self._seen:
            span = self.items.cardinality
            before = [self.pairs(s) for s in earlier_splits(split, self.manifest.splits)]
            self._seen[split] = np.unique(np.concatenate([p.users * span + p.items for p in before]))
            pairs = self.pairs(split)
            keep = pairs.labels > 0
            self._positive[split] = np.unique(pairs.users[keep] * span + pairs.items[keep])
        return self._seen[split], self._positive[split]

    def top(self, split: str, users: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(item catalogue rows (u, n), scores float32 (u, n), labels bool (u, n)) of ``users``."""
        span = self.items.cardinality
        rows = self.users[split].positions_of(users)
        scores = self.user_vectors[split][torch.from_numpy(rows)] @ self.item_vectors.T  # (u, catalogue rows)
        seen, positive = self._keys(split)
        grid = users[:, None] * span + self.items.index[None, :]
        scores[torch.from_numpy(np.isin(grid, seen))] = -torch.inf
        top = torch.topk(scores, self.n, dim=1)
        item_rows = top.indices.numpy()
        labels = np.isin(users[:, None] * span + self.items.index[item_rows], positive)
        return item_rows, top.values.numpy(), labels


def pair_rows(
    manifest: Manifest,
    users: Catalog,
    items: Catalog,
    counts: np.ndarray,
    user_index: np.ndarray,
    item_rows: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    scale: tuple[float, float],
    neighbours: ItemNeighbours,
    profiles: sp.csr_matrix,
) -> Rows:
    """The rows of whole lists: user ``user_index[u]`` beside each item of ``item_rows[u]`` (catalogue
    positions, the retriever's order), features as the funnel builds them (``funnel.inputs``)."""
    lists, n = item_rows.shape
    user_rows = np.repeat(users.positions_of(user_index), n)
    flat = item_rows.reshape(-1)
    features = [list_features(s, scale) for s in scores]
    extra = {name: np.concatenate([f[name] for f in features]) for name in [*LIST_FEATURES, RANK_BUCKET]}
    extra[POPULARITY] = popularity_feature(counts[items.index[flat]])
    history = users.multi.get(manifest.roles.get("history", ""))
    affinity = []
    for u in range(lists):  # the profile as the funnel builds it: positives before, and the history
        past = jagged_take(*history, user_rows[u * n : u * n + 1])[1] if history is not None else np.zeros(0)
        affinity.append(affinity_features(neighbours, items.index[item_rows[u]], profiles[user_index[u]].indices, past))
    extra.update({name: np.concatenate([a[name] for a in affinity]) for name in AFFINITY_FEATURES})

    def columns(features: list, of: str, dtype: type) -> np.ndarray:
        """One column per feature: the list's own, the user's or the item's (a context one: 0)."""
        out = np.zeros((lists * n, len(features)), dtype)
        for j, f in enumerate(features):
            if f.name in extra:
                out[:, j] = extra[f.name]
            elif f.name in getattr(users, of):
                out[:, j] = getattr(users, of)[f.name][user_rows]
            elif f.name in getattr(items, of):
                out[:, j] = getattr(items, of)[f.name][flat]
        return out

    dense = columns(manifest.dense, "dense", np.float32)
    sparse = columns(manifest.single_hot, "single", np.int64)
    mh_lengths = np.zeros((lists * n, len(manifest.multi_hot)), np.int32)
    mh_values = []
    for j, f in enumerate(manifest.multi_hot):
        owner = users if f.name in users.multi else items if f.name in items.multi else None
        if owner is None:
            mh_values.append(np.zeros(0, np.int64))
            continue
        lengths, values = jagged_take(*owner.multi[f.name], user_rows if owner is users else flat)
        mh_lengths[:, j] = lengths
        mh_values.append(values.astype(np.int64))
    return Rows(dense, sparse, mh_lengths, mh_values, labels.reshape(-1, 1).astype(np.float32))


def describe(folder: str | Path) -> str:
    """One line on a candidates folder, for people."""
    extra = json.loads((Path(folder) / "manifest.json").read_text())["extra"]["candidates"]
    period = {"val": "validation period (to train on)", "test": "test period"}
    parts = [
        f"{period[s]}: {v['lists']:,} lists ({v['coverage']:.0%} of the users hold a positive)"
        for s, v in extra["splits"].items()
    ]
    return (
        f"candidate lists in {folder}: {extra['list_rows']} a list; {'; '.join(parts)}; "
        f"built in {extra['seconds']:.1f} s ({extra['candidates_per_s']:,.0f} candidates/s)"
    )
