"""The recommendation funnel: retrieve from the index -> filter -> rank -> re-rank -> top k.

    funnel = Funnel.load("runs/two-tower", index="index/", ranker="runs/dlrm")
    result = funnel.recommend(user_id=196, k=10, exclude=[50])
    result.items     # [(item_id, score), ...] best first
    result.timings   # {"retrieve": ms, "filter": ms, "rank": ms, "rerank": ms}

Every stage is optional (``FunnelConfig``): without a ranker the retrieval score orders the
candidates; ``rerank: none`` keeps that order. A user the model never saw is embedded from the
features the request gives (the user tower with its id unknown), or gets the most popular items.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from recfunnel.config import check, config_from_dict, with_overrides
from recfunnel.data.format.catalog import Catalog
from recfunnel.data.format.list_features import (
    AFFINITY_FEATURES,
    LIST_FEATURES,
    NEIGHBOURS,
    RANK_BUCKET,
    ItemNeighbours,
    affinity_features,
    list_features,
)
from recfunnel.data.format.request_encoder import RequestEncoder
from recfunnel.errors import ConfigError, RecfunnelError
from recfunnel.funnel.inputs import (
    UserFeatures,
    multi_hot_from_raw,
    pair_inputs,
    tower_inputs,
    user_from_catalog,
    user_from_raw,
)
from recfunnel.funnel.rerank import mmr_many
from recfunnel.retrieval.item_index import ItemIndex
from recfunnel.store.interactions import load_interactions
from recfunnel.store.model import Trained, load_trained, model_digest

__all__ = ["FunnelConfig", "Funnel", "Recommendation", "Request", "STAGES", "funnel_config"]

STAGES = ("retrieve", "filter", "rank", "rerank")


@dataclass
class Rule:
    """Keep or drop items by a categorical item feature's raw values."""

    feature: str
    include: list[str] = field(default_factory=list)  # keep only items with one of these values
    exclude: list[str] = field(default_factory=list)  # drop items with any of these values

    def validate(self, at: str = "rule") -> None:
        check(bool(self.include) != bool(self.exclude), at, "one of include or exclude", self)


@dataclass
class FunnelConfig:
    candidates: int = 200  # retrieved from the index, then filtered and ranked
    exclude_seen: bool = True  # drop items the user interacted with in training
    rules: list[Rule] = field(default_factory=list)
    rank: bool = True  # rank candidates with the ranker, when one is given
    rerank: str = "mmr"  # mmr | none
    diversity_feature: str = "auto"  # item feature MMR diversifies over; auto: the first multi-hot one
    mmr_lambda: float = 0.8  # 1 = relevance only, 0 = diversity only

    def validate(self) -> None:
        check(self.candidates >= 1, "candidates", "an integer >= 1", self.candidates)
        check(self.rerank in ("mmr", "none"), "rerank", "mmr or none", self.rerank)
        check(0 <= self.mmr_lambda <= 1, "mmr_lambda", "a number in [0, 1]", self.mmr_lambda)
        for i, rule in enumerate(self.rules):
            rule.validate(f"rules[{i}]")


def funnel_config(file: str | Path | None = None, overrides: list[str] = ()) -> FunnelConfig:
    """Defaults, then a YAML ``file``, then ``key=value`` overrides (``candidates=300``,
    ``'rules=[{feature: genres, exclude: [Horror]}]'``)."""
    data = {}
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"{path}: funnel config file not found")
        data = yaml.safe_load(path.read_text()) or {}
    return with_overrides(data, list(overrides), FunnelConfig)


@dataclass
class Recommendation:
    items: list[tuple[Any, float]]  # (raw item id, score), best first
    timings: dict[str, float]  # milliseconds per stage that ran
    source: str  # "user" (known user), "features" (new user, feature-only tower), "popular"
    warnings: list[str] = field(default_factory=list)
    batch: int = 1  # requests that went through the models together with this one


@dataclass
class Request:
    """One recommendation request: a known ``user_id``, or a new user's ``features``, or neither
    (the most popular items); ``exclude``: raw item ids to leave out."""

    user_id: Any = None
    k: int = 10
    exclude: Sequence[Any] = ()
    features: dict[str, Any] | None = None


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)


class Funnel:
    def __init__(
        self, retriever: Trained, index: ItemIndex, ranker: Trained | None = None, config: FunnelConfig | None = None
    ):
        self.config = config or FunnelConfig()
        self.config.validate()
        self.retriever, self.index, self.ranker = retriever, index, ranker
        manifest = retriever.manifest
        self.manifest = manifest
        self.interactions = load_interactions(retriever.folder, manifest)  # seen items, popularity
        self.users = Catalog.load(retriever.folder, manifest, "user")
        self.items = Catalog.load(retriever.folder, manifest, "item")
        self.encoder = RequestEncoder(manifest, retriever.folder)
        self.user_key, self.item_key = manifest.roles["user"], manifest.roles["item"]
        self.item_rows = pd.Index(self.items.raw_ids)  # raw item id -> catalogue row
        self.user_rows = pd.Index(self.users.raw_ids)
        self.rank_items, self.list_scale = self.items, None
        self.neighbours: ItemNeighbours | None = None  # with list_scale: a ranker trained on candidate lists
        if ranker is not None:
            _check_same_features(retriever, ranker)
            if LIST_FEATURES[0] in {f.name for f in ranker.manifest.dense}:  # trained on this retriever's lists
                self.rank_items = Catalog.load(ranker.folder, ranker.manifest, "item")
                if not np.array_equal(self.rank_items.index, self.items.index):
                    raise RecfunnelError(
                        "--ranker: its item catalogue differs from the two-tower's; train both on one dataset"
                    )
                self.list_scale = tuple(ranker.manifest.extra["candidates"]["scale"])
                self.neighbours = ItemNeighbours.load(ranker.folder / NEIGHBOURS)
        self.allowed = self._allowed_items()  # bool by item index: what the rules keep
        self._ruled_out = int(len(self.items) - self.allowed[self.items.index].sum())
        self.diversity = self._diversity_feature()
        self._members: dict[str, np.ndarray] = {}
        popularity = self.interactions.popularity
        order = np.argsort(-popularity, kind="stable")
        self.popular = order[(popularity[order] > 0) & self.allowed[order]]
        for name in manifest.roles.get("user_features", []):  # vocabularies read now, not mid-request
            if name in manifest.sparse_keys:
                self.encoder.indices(name, [])

    @classmethod
    def load(
        cls,
        run: str | Path,
        index: str | Path | None = None,
        ranker: str | Path | None = None,
        config: FunnelConfig | dict | None = None,
        other_model_index: str = "error",
    ) -> Funnel:
        """A two-tower run (folder, or its model folder), its index folder (built in memory, exact,
        when None) and an optional ranker run trained on the same dataset. An index built from
        other weights than the run's is an error, or with ``other_model_index="rebuild"`` rebuilt
        in memory with its kind and parameters (a new model version served with an older index)."""
        retriever = load_trained(run)
        if not retriever.config.is_retrieval:
            raise RecfunnelError(
                f"{run}: a {retriever.kind} run cannot retrieve; --run takes a two-tower run "
                f"(a ranker goes in --ranker)"
            )
        item_index = ItemIndex.build(retriever)[0] if index is None else ItemIndex.load(index)
        if index is not None and item_index.matches(retriever) is False:
            if other_model_index != "rebuild":
                raise RecfunnelError(
                    f"{index}: built from other weights than {run}'s (model digest "
                    f"{item_index.meta['model_digest']}, not {model_digest(retriever.folder)}); rebuild it "
                    f"with `recfunnel index --run {run} --out {index} --overwrite`"
                )
            item_index = item_index.rebuilt_for(retriever)
        ranked = load_trained(ranker) if ranker is not None else None
        if ranked is not None and ranked.config.is_retrieval:
            raise RecfunnelError(f"{ranker}: --ranker takes a dlrm, dcnv2 or deepfm run, not a two-tower one")
        if isinstance(config, dict):
            config = config_from_dict(FunnelConfig, config)
        return cls(retriever, item_index, ranked, config)

    def variant(self, **changes: Any) -> Funnel:
        """The same models and index with some config fields changed (e.g. ``rank=False``); rules
        cannot change here (they are compiled at load)."""
        if "rules" in changes:
            raise ConfigError("rules cannot change in a variant; load another Funnel")
        other = copy.copy(self)
        other.config = dataclasses.replace(self.config, **changes)
        other.config.validate()
        other.diversity = other._diversity_feature()
        return other

    # --- the request path ---------------------------------------------------------------------

    def recommend(
        self, user_id: Any = None, k: int = 10, exclude: Sequence[Any] = (), features: dict[str, Any] | None = None
    ) -> Recommendation:
        return self.recommend_many([Request(user_id, k, exclude, features)])[0]

    def recommend_many(self, requests: Sequence[Request]) -> list[Recommendation]:
        """Recommendations for several requests at once: their users go through the user tower in
        one call, the index in one search and the ranker in one call (the per-user stages, filter
        and re-rank, stay per user); each answer is what ``recommend`` gives for its request alone.
        A stage's time in ``timings`` is the whole batch's (what each request waited for it)."""
        start = time.perf_counter()
        notes: list[list[str]] = [[] for _ in requests]
        users, sources = (
            zip(*(self.user_of(r.user_id, r.features, n) for r, n in zip(requests, notes))) if requests else ((), ())
        )
        excluded = [self.excluded_items(u, r.exclude, n) for u, r, n in zip(users, requests, notes)]
        out: list[Recommendation | None] = [None] * len(requests)
        embedded = [i for i, source in enumerate(sources) if source != "popular"]
        for i in set(range(len(requests))) - set(embedded):
            keep = self.popular[~np.isin(self.popular, excluded[i])][: requests[i].k]
            scores = self.interactions.popularity[keep]
            out[i] = Recommendation(
                self._raw(keep, scores), {"retrieve": _ms(start)}, "popular", notes[i], len(requests)
            )
        if embedded:
            queries = self._embed([users[i] for i in embedded])
            scores, ids = self.index.vectors.search(queries, self._fetch(max(len(excluded[i]) for i in embedded)))
            timings = {"retrieve": _ms(start)}
            found = self._finish_many(
                [users[i] for i in embedded],
                scores,
                ids,
                [excluded[i] for i in embedded],
                [requests[i].k for i in embedded],
                timings,
            )
            for i, items, times in zip(embedded, *found):
                out[i] = Recommendation(items, times, sources[i], notes[i], len(requests))
        return out  # type: ignore[return-value]

    def _fetch(self, excluded: int) -> int:
        """Items to ask the index for: the candidates, plus as many as filtering may drop."""
        return min(len(self.index.vectors), self.config.candidates + excluded + self._ruled_out)

    def _finish_many(
        self,
        users: list[UserFeatures],
        scores: np.ndarray,
        ids: np.ndarray,
        excluded: list[np.ndarray],
        ks: list[int],
        timings: dict[str, float],
    ) -> tuple[list[list[tuple[Any, float]]], list[dict[str, float]]]:
        """The stages after retrieval, for users' retrieved (scores, raw ids), one row each: the
        filter and the re-rank per user, the ranker once for all. (items, timings) per user."""
        start = time.perf_counter()
        rows = self.item_rows.get_indexer(ids.ravel()).reshape(ids.shape)  # one lookup for the batch
        kept = self._filter(scores, ids, rows, excluded)
        timings["filter"] = _ms(start)
        if self.ranker is not None and self.config.rank and any(len(rows) for _, _, rows in kept):
            start = time.perf_counter()
            ranked = np.split(
                self._rank(users, [rows for _, _, rows in kept], [scores for _, scores, _ in kept]),
                np.cumsum([len(r) for *_, r in kept])[:-1],
            )
            for u, (ids_u, _, rows_u) in enumerate(kept):
                order = np.argsort(-ranked[u], kind="stable")
                kept[u] = ids_u[order], ranked[u][order], rows_u[order]
            timings["rank"] = _ms(start)
        start = time.perf_counter()
        if self.config.rerank == "mmr" and self.diversity is not None:
            lists = [u for u, (ids_u, _, _) in enumerate(kept) if len(ids_u) > 1]
            picked = mmr_many(
                [kept[u][1] for u in lists],
                [self._genre_sets(kept[u][2]) for u in lists],
                [ks[u] for u in lists],
                self.config.mmr_lambda,
            )
            for u, chosen in zip(lists, picked):
                kept[u] = kept[u][0][chosen], kept[u][1][chosen], kept[u][2]
        items = [
            list(zip(ids_u[:k].tolist(), scores_u[:k].astype(float).tolist()))
            for (ids_u, scores_u, _), k in zip(kept, ks)
        ]
        if self.config.rerank == "mmr" and self.diversity is not None:
            timings["rerank"] = _ms(start)
        return items, [dict(timings) for _ in users]

    def _filter(
        self, scores: np.ndarray, ids: np.ndarray, rows: np.ndarray, excluded: list[np.ndarray]
    ) -> list[tuple[np.ndarray, ...]]:
        """Each user's retrieved items (a row each of raw ids, their catalogue rows) that the rules
        and exclusions keep, at most ``candidates``: (raw ids, scores, catalogue rows) per user.
        One membership test for the batch: (user, item) pairs against the users' exclusions."""
        item_index = np.where(rows >= 0, self.items.index[np.maximum(rows, 0)], 0)
        span = self.items.cardinality
        owner = np.arange(len(excluded))[:, None]
        ruled_out = np.concatenate([u * span + e for u, e in enumerate(excluded)]) if excluded else np.zeros(0)
        keep = np.isfinite(scores) & self.allowed[item_index] & ~np.isin(owner * span + item_index, ruled_out)
        n = self.config.candidates
        return [(ids[u][k][:n], scores[u][k][:n], rows[u][k][:n]) for u, k in enumerate(keep)]

    def similar_items(self, item_id: Any, k: int = 10) -> list[tuple[Any, float]]:
        """The ``k`` items nearest to ``item_id`` in the index (itself left out)."""
        row = positions(self.item_rows, [item_id])[0]
        if row < 0:
            raise KeyError(item_id)
        dense, kjt = self.items.inputs(np.array([row]), *self.retriever.model.inputs("item"))
        with torch.inference_mode():
            query = self.retriever.model.embed("item", dense, kjt).float().numpy()
        scores, ids = self.index.vectors.search(query, min(len(self.index.vectors), k + 1))
        out = [(i, float(s)) for i, s in zip(ids[0].tolist(), scores[0].tolist()) if i != item_id and np.isfinite(s)]
        return out[:k]

    # --- stages -------------------------------------------------------------------------------

    def user_of(self, user_id: Any, features: dict[str, Any] | None, notes: list[str]) -> tuple[UserFeatures, str]:
        row = position(self.user_rows, user_id) if user_id is not None else -1
        if row >= 0:
            user = user_from_catalog(self.users, row)
            name = self.manifest.roles.get("history")
            if name and features and name in features:  # what the user did since training
                user.sparse[name] = multi_hot_from_raw(self.manifest, self.encoder, name, features[name], notes)
            return user, "user"
        if user_id is not None:
            notes.append(
                f"unknown user_id {user_id!r}: " + ("embedded from its features" if features else "most popular items")
            )
        if features:
            user, problems = user_from_raw(self.manifest, self.encoder, features)
            notes.extend(problems)
            return user, "features"
        return UserFeatures(), "popular"

    def _embed(self, users: list[UserFeatures]) -> np.ndarray:
        towers = self.retriever.model
        dense, kjt = tower_inputs(users, self.user_key, *towers.inputs("user"))
        with torch.inference_mode():
            return towers.embed("user", dense, kjt).float().numpy()

    def excluded_items(self, user: UserFeatures, exclude: Sequence[Any], notes: list[str]) -> np.ndarray:
        """Item indices to leave out: the user's training items and the request's list."""
        seen = self.interactions.seen(user.index) if self.config.exclude_seen else np.zeros(0, np.int64)
        if not len(exclude):
            return seen
        rows = positions(self.item_rows, exclude)
        unknown = [e for e, r in zip(exclude, rows) if r < 0]
        if unknown:
            notes.append(f"unknown item ids in exclude, ignored: {unknown[:10]}")
        return np.concatenate([seen, self.items.index[rows[rows >= 0]]])

    def _rank(self, users: list[UserFeatures], rows: list[np.ndarray], scores: list[np.ndarray]) -> np.ndarray:
        """The ranker's probabilities of ``users[u]`` beside each of ``rows[u]``, all in one array;
        ``scores[u]``: the retriever's scores of ``rows[u]``, best first (list features of a
        ranker trained on this retriever's candidates)."""
        context = None
        if self.list_scale is not None and self.neighbours is not None:
            parts = [list_features(s, self.list_scale) for s in scores]
            history = self.manifest.roles.get("history", "")
            for part, user, rows_u in zip(parts, users, rows):  # the profile: positives, and the history
                candidates = np.where(rows_u >= 0, self.items.index[np.maximum(rows_u, 0)], 0)
                taken, past = self.interactions.taken(user.index), user.sparse.get(history, [])
                part.update(affinity_features(self.neighbours, candidates, taken, past))
            names = [*LIST_FEATURES, *AFFINITY_FEATURES, RANK_BUCKET]
            context = {name: np.concatenate([p[name] for p in parts]) for name in names}
            top_bucket = self.ranker.manifest.feature(RANK_BUCKET).cardinality - 1  # lists longer than trained on
            context[RANK_BUCKET] = np.minimum(context[RANK_BUCKET], top_bucket)
        dense, kjt = pair_inputs(self.ranker.manifest, users, self.rank_items, rows, context)
        with torch.inference_mode():
            logits = self.ranker.model(dense, kjt)
        return torch.sigmoid(logits[:, 0]).float().numpy()

    def _genre_sets(self, rows: np.ndarray) -> np.ndarray:
        """0/1 float32 (len(rows), values): the diversity feature's values of catalogue rows (-1: none)."""
        members = self._members.get(self.diversity)
        if members is None:  # built once per feature: (items + 1, cardinality), the last row empty
            lengths, values = self.items.multi[self.diversity]
            members = np.zeros((len(self.items) + 1, self.manifest.feature(self.diversity).cardinality), np.float32)
            members[np.repeat(np.arange(len(self.items)), lengths), values] = 1.0
            self._members[self.diversity] = members
        return members[rows]  # row -1 is the empty last row

    def _raw(self, item_index: np.ndarray, scores: np.ndarray) -> list[tuple[Any, float]]:
        rows = self.items.positions_of(item_index)
        return [
            (
                self.items.raw_ids[r].item() if hasattr(self.items.raw_ids[r], "item") else self.items.raw_ids[r],
                float(s),
            )
            for r, s in zip(rows, scores)
            if r >= 0
        ]

    def _allowed_items(self) -> np.ndarray:
        allowed = np.zeros(self.items.cardinality, bool)
        allowed[self.items.index] = True
        allowed[0] = False
        for i, rule in enumerate(self.config.rules):
            name = rule.feature
            if name not in self.items.single and name not in self.items.multi:
                raise ConfigError(
                    f"rules[{i}].feature: {name!r} is not a categorical item feature; the items have "
                    f"{sorted([*self.items.single, *self.items.multi])}"
                )
            wanted = self.encoder.indices(name, list(rule.include or rule.exclude))
            if name in self.items.single:
                hit = np.isin(self.items.single[name], wanted)
            else:
                lengths, values = self.items.multi[name]
                owner = np.repeat(np.arange(len(self.items)), lengths)
                hit = np.zeros(len(self.items), bool)
                hit[owner[np.isin(values, wanted)]] = True
            drop = ~hit if rule.include else hit
            allowed[self.items.index[drop]] = False
        return allowed

    def _diversity_feature(self) -> str | None:
        if self.config.rerank == "none":
            return None
        name = self.config.diversity_feature
        if name == "auto":
            return next(iter(self.items.multi), None)
        if name not in self.items.multi:
            raise ConfigError(
                f"diversity_feature: {name!r} is not a multi-hot item feature; the items have "
                f"{sorted(self.items.multi) or 'none'}"
            )
        return name


def positions(index: pd.Index, ids: Sequence[Any]) -> np.ndarray:
    """Where each of ``ids`` is in ``index`` (-1: absent). An id that cannot be one of the index's
    (an integer past int64, a float NaN) is absent, not an error."""
    try:
        return index.get_indexer(list(ids))
    except (OverflowError, ValueError, TypeError):
        return np.array([_position(index, i) for i in ids], np.int64)


def position(index: pd.Index, id_: Any) -> int:
    """Where ``id_`` is in ``index`` (-1: absent); as ``positions`` gives it, a hundred times
    faster for a plain int or str (a hash lookup, not an array's)."""
    if type(id_) in (int, str):
        try:
            found = index.get_loc(id_)
        except (KeyError, OverflowError, TypeError, ValueError):
            return -1
        if isinstance(found, int | np.integer):
            return int(found)
    return _position(index, id_)


def _position(index: pd.Index, id_: Any) -> int:
    try:
        return int(index.get_indexer([id_])[0])
    except (OverflowError, ValueError, TypeError):
        return -1


def _check_same_features(retriever: Trained, ranker: Trained) -> None:
    """The ranker must have been trained on the retriever's dataset (same vocabularies)."""
    mine = {f.name: f.cardinality for f in retriever.manifest.sparse}
    for f in ranker.manifest.sparse:
        if f.name in mine and mine[f.name] != f.cardinality:
            raise RecfunnelError(
                f"--ranker: feature {f.name!r} has {f.cardinality} ids in the ranker's dataset and "
                f"{mine[f.name]} in the two-tower's; train both on the same dataset"
            )
    missing = {ranker.manifest.roles.get("user"), ranker.manifest.roles.get("item")} - set(mine)
    if missing - {None}:
        raise RecfunnelError(
            f"--ranker: the ranker uses {sorted(missing - {None})}, which the two-tower's dataset lacks"
        )
