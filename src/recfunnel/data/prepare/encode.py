"""Encoding checked interaction tables into blocks of numbers: vocabularies, indices, standardised floats.

User and item features are encoded once per entity, into a :class:`Rows` block whose row ``k`` is
the entity with vocabulary index ``k`` (row 0 = the OOV entity: every feature missing); a training
row then gathers its user's and item's rows. Context (row-level) features are encoded per row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from recfunnel.data.format.manifest import DenseFeature, SparseFeature
from recfunnel.data.format.request_encoder import explode_lists
from recfunnel.data.format.rows import Rows
from recfunnel.data.format.vocab import Vocab
from recfunnel.data.prepare.example_age import ExampleAge
from recfunnel.data.prepare.history import HISTORY, History
from recfunnel.data.prepare.splits import TRAIN
from recfunnel.data.prepare.tables import Checked, Feature
from recfunnel.errors import DataError

__all__ = ["Block", "Encoded", "encode_features"]


@dataclass
class Block:
    """Encoded features of one owner (user, item or context), in manifest order within the owner."""

    rows: Rows  # dense / sparse / mh_* columns; labels (n, 0)
    dense: list[DenseFeature] = field(default_factory=list)
    single: list[SparseFeature] = field(default_factory=list)
    multi: list[SparseFeature] = field(default_factory=list)
    vocabs: list[Vocab] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class Encoded:
    user_vocab: Vocab
    item_vocab: Vocab
    user_index: np.ndarray  # int64 (n,): vocabulary index of each row's user
    item_index: np.ndarray  # int64 (n,)
    users: Block  # n_users + 1 rows, row 0 = OOV
    items: Block  # n_items + 1 rows, row 0 = OOV
    context: Block  # n rows
    titles: np.ndarray | None  # object (n_items + 1,): item titles, None where unknown
    history: History | None = None  # each row's point-in-time history (the last multi-hot feature)
    age: ExampleAge | None = None  # each row's example age (the last dense feature)

    @property
    def dense(self) -> list[DenseFeature]:
        return self.users.dense + self.items.dense + self.context.dense + ([self.age.feature] if self.age else [])

    @property
    def sparse(self) -> list[SparseFeature]:
        """Single-hot (user_id, item_id, user, item, context features), then multi-hot ones."""
        ids = [
            SparseFeature("user_id", self.user_vocab.cardinality),
            SparseFeature("item_id", self.item_vocab.cardinality),
        ]
        single = ids + self.users.single + self.items.single + self.context.single
        return single + self.users.multi + self.items.multi + self.context.multi + self._history_feature

    @property
    def _history_feature(self) -> list[SparseFeature]:
        if self.history is None:
            return []
        return [
            SparseFeature(
                HISTORY, self.item_vocab.cardinality, multi_hot=True, max_len=self.history.length, vocab="item_id"
            )
        ]

    @property
    def vocabs(self) -> list[Vocab]:
        return [self.user_vocab, self.item_vocab] + self.users.vocabs + self.items.vocabs + self.context.vocabs

    @property
    def stats(self) -> dict[str, Any]:
        age = {self.age.feature.name: self.age.stats} if self.age else {}
        return {**self.users.stats, **self.items.stats, **self.context.stats, **age}

    def rows(self, idx: np.ndarray, labels: np.ndarray) -> Rows:
        """Training rows ``idx`` (int (k,)) with every feature in manifest order; labels float32 (n, L)."""
        u, i = self.user_index[idx], self.item_index[idx]
        parts = [self.users.rows.take(u), self.items.rows.take(i), self.context.rows.take(idx)]
        mh_lengths = [p.mh_lengths for p in parts]
        mh_values = [v for p in parts for v in p.mh_values]
        if self.history is not None:
            lengths, values = self.history.take(idx)
            mh_lengths.append(lengths[:, None])
            mh_values.append(values)
        return Rows(
            dense=np.hstack([p.dense for p in parts] + ([self.age.values[idx, None]] if self.age else [])),
            sparse=np.column_stack([u, i] + [p.sparse for p in parts]).astype(np.int64, copy=False),
            mh_lengths=np.hstack(mh_lengths),
            mh_values=mh_values,
            labels=labels[idx],
        )


def encode_features(checked: Checked, features: list[Feature], codes: np.ndarray) -> Encoded:
    """Vocabularies from train rows (ids: plus every catalog id, with count 0), then every block.

    codes: split code per row, int8 (n,).
    """
    train = codes == TRAIN
    user_vocab = Vocab.build("user_id", checked.user_id[train], also=_catalog(checked.user_id, checked.users))
    item_vocab = Vocab.build("item_id", checked.item_id[train], also=_catalog(checked.item_id, checked.items))
    blocks = {}
    for owner, vocab, table in (("user", user_vocab, checked.users), ("item", item_vocab, checked.items)):
        frame = _aligned(table, vocab)
        in_train = np.r_[False, vocab.counts > 0]  # entities seen in train: standardisation stats
        catalog = np.r_[False, np.ones(vocab.cardinality - 1, bool)]  # every entity: category counts
        blocks[owner] = _encode_block(frame, [f for f in features if f.owner == owner], in_train, catalog)
    context = _encode_block(checked.context, [f for f in features if f.owner == "context"], train, train)
    titles = None
    if checked.items is not None and "title" in checked.items.columns:
        titles = _aligned(checked.items[["title"]], item_vocab)["title"].to_numpy(dtype=object)
    return Encoded(
        user_vocab,
        item_vocab,
        user_vocab.encode(checked.user_id),
        item_vocab.encode(checked.item_id),
        blocks["user"],
        blocks["item"],
        context,
        titles,
    )


def _catalog(ids: pd.Series, table: pd.DataFrame | None) -> pd.Series:
    """Every id of the interactions and of the entity table (items never rated included)."""
    return ids if table is None else pd.concat([ids, pd.Series(table.index.to_numpy())], ignore_index=True)


def _aligned(table: pd.DataFrame | None, vocab: Vocab) -> pd.DataFrame:
    """``table``'s rows in vocabulary order, with an all-missing row 0 for the OOV bucket."""
    n = vocab.cardinality
    if table is None:
        return pd.DataFrame(index=pd.RangeIndex(n))
    frame = table.reindex(pd.Index(vocab.values)).reset_index(drop=True)
    frame.index = frame.index + 1
    return frame.reindex(pd.RangeIndex(n))


def _encode_block(frame: pd.DataFrame, features: list[Feature], stat_rows: np.ndarray, count_rows: np.ndarray) -> Block:
    """Encode ``features`` of ``frame`` (n rows). stat_rows: bool (n,), rows whose dense values give
    mean/std; count_rows: bool (n,), rows whose categories are counted into vocabularies."""
    n = len(frame)
    block = Block(Rows.empty(0, 0, 0, 0))
    dense, sparse, lengths, values = [], [], [], []
    for f in features:
        col = frame[f.name]
        if f.kind == "dense":
            x, feat, block.stats[f.name] = _standardize(
                f.name, col.to_numpy(np.float64, na_value=np.nan), stat_rows, count_rows
            )
            dense.append(x)
            block.dense.append(feat)
        elif f.kind == "categorical":
            vocab = _vocab(f, col[count_rows])
            sparse.append(vocab.encode(col))
            block.single.append(SparseFeature(f.name, vocab.cardinality))
            block.vocabs.append(vocab)
        else:
            lens, flat = explode_lists(col)
            vocab = _vocab(f, flat[np.repeat(count_rows, lens)])
            lengths.append(lens)
            values.append(vocab.encode(flat))
            block.multi.append(
                SparseFeature(f.name, vocab.cardinality, multi_hot=True, max_len=max(1, int(lens.max(initial=0))))
            )
            block.vocabs.append(vocab)
    block.rows = Rows(
        dense=_stack(dense, n, np.float32),
        sparse=_stack(sparse, n, np.int64),
        mh_lengths=_stack(lengths, n, np.int32),
        mh_values=values,
        labels=np.zeros((n, 0), np.float32),
    )
    return block


def _stack(columns: list[np.ndarray], n: int, dtype: type) -> np.ndarray:
    return np.column_stack(columns).astype(dtype, copy=False) if columns else np.zeros((n, 0), dtype)


def _vocab(f: Feature, values: pd.Series) -> Vocab:
    vocab = Vocab.build(f.name, values)
    if vocab.cardinality < 2:
        where = "train rows" if f.owner == "context" else f"the {f.owner}s"
        raise DataError(f"{f.owner} feature {f.name!r} has no values in {where}; drop it or fill it")
    return vocab


def _standardize(
    name: str, x: np.ndarray, stat_rows: np.ndarray, real_rows: np.ndarray
) -> tuple[np.ndarray, DenseFeature, dict[str, Any]]:
    """(x - mean) / std with mean/std of ``x[stat_rows]``; missing (NaN) -> 0, i.e. the mean. float32 (n,)."""
    sample = x[stat_rows]
    sample = sample[~np.isnan(sample)]
    mean = float(sample.mean()) if len(sample) else 0.0
    std = float(sample.std()) if len(sample) else 1.0
    std = std if std > 0 else 1.0  # a constant feature stays constant (0) instead of dividing by 0
    out = np.nan_to_num((x - mean) / std, nan=0.0).astype(np.float32)
    stats = {"mean": mean, "std": std, "missing": int(np.isnan(x[real_rows]).sum())}
    return out, DenseFeature(name, f"standardize(mean={mean:.8g}, std={std:.8g})"), stats
