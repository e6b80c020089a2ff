"""The two-tower retrieval model: a user tower and an item tower whose embeddings are scored by a
dot product (or cosine). Loss-free: the retrieval task turns embeddings into a loss.

    model = build_two_tower(manifest, config.model)
    users, items = model(batch.dense, batch.sparse)      # (B, E) each, for the batch's pairs
    model.embed("user", dense_u, kjt_u)                  # one tower's inputs only, e.g. a catalogue
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recfunnel.config import ModelConfig
from recfunnel.data.format.manifest import Manifest
from recfunnel.errors import ConfigError
from recfunnel.models.features import dense_columns, select_sparse, sparse_features
from recfunnel.models.parts import SequenceAttention, SparseArch, embedding_tables, mlp

__all__ = ["Tower", "TwoTower", "build_two_tower", "tower_features"]


class Tower(nn.Module):
    """One tower's head: the pooled embeddings of its sparse features (looked up by the two-tower's
    one embedding collection), its dense features and, with attention pooling, the attended
    history, through an MLP -> (B, E).

    ``sparse_keys``: the inputs it needs; ``columns``: the pooled features it reads, as positions in
    the shared lookup's output. ``sequence``: a sequence feature pooled by attention
    (``model.history_pooling: attention``) instead of by the bags."""

    columns: torch.Tensor  # int64 (F,): this tower's features in the shared lookup's output

    def __init__(
        self,
        sparse_keys: list[str],
        columns: list[int],
        dim: int,
        dense_names: list[str],
        layers: list[int],
        normalize: bool,
        dropout: float = 0.0,
        sequence: SequenceAttention | None = None,
    ):
        super().__init__()
        self.sparse_keys = sparse_keys  # the inputs it needs (a recent history is derived, not read)
        self.dense_names = dense_names
        self.sequence = sequence
        self.register_buffer("columns", torch.tensor(columns, dtype=torch.long), persistent=False)
        width = (len(columns) + int(sequence is not None)) * dim + len(dense_names)
        self.mlp = mlp(width, layers, dropout=dropout, last_activation=False)
        self.normalize = normalize

    def forward(self, dense: torch.Tensor, pooled: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        embedded = pooled.index_select(1, self.columns).flatten(1)
        if self.sequence is not None:
            embedded = torch.cat([embedded, self.sequence(select_sparse(sparse, [self.sequence.feature]))], dim=1)
        out = self.mlp(torch.cat([embedded, dense], dim=1) if self.dense_names else embedded)
        return F.normalize(out, dim=1) if self.normalize else out


class TwoTower(nn.Module):
    """Both towers over one embedding collection (``sparse_arch``): one lookup a batch, and a table
    may serve both towers (the item ids and the user's history, ``model.share_item_table``).

    ``recent``: (feature, n) to pool a sequence feature's first n ids apart as well (the user's
    latest items beside the mean of the whole history: the next item follows the last few far
    more than the fiftieth), as the feature ``<feature>_recent`` of the same table."""

    user_dense_index: torch.Tensor  # int64: the batch's dense columns each tower reads
    item_dense_index: torch.Tensor

    def __init__(
        self,
        sparse_arch: SparseArch,
        user_tower: Tower,
        item_tower: Tower,
        *,
        user_dense_index: list[int],
        item_dense_index: list[int],
        recent: tuple[str, int] | None = None,
    ):
        super().__init__()
        self.sparse_arch = sparse_arch
        self.user_tower = user_tower
        self.item_tower = item_tower
        self.recent = recent
        derived = recent_name(recent[0]) if recent else None
        self._lookup_keys = [k for k in sparse_arch.feature_names if k != derived]
        self.register_buffer("user_dense_index", torch.tensor(user_dense_index, dtype=torch.long), persistent=False)
        self.register_buffer("item_dense_index", torch.tensor(item_dense_index, dtype=torch.long), persistent=False)

    def _pooled(self, sparse: KeyedJaggedTensor) -> torch.Tensor:
        if self.recent is not None:
            sparse = with_recent(sparse, *self.recent)
        return self.sparse_arch(select_sparse(sparse, self.sparse_arch.feature_names))

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch's (user, item) pairs -> user embeddings (B, E), item embeddings (B, E)."""
        pooled = self._pooled(sparse)
        return (
            self.user_tower(dense[:, self.user_dense_index], pooled, sparse),
            self.item_tower(dense[:, self.item_dense_index], pooled, sparse),
        )

    def inputs(self, role: str) -> tuple[list[str], list[str]]:
        """(sparse keys, dense names) that ``embed(role, ...)`` reads."""
        tower = self.user_tower if role == "user" else self.item_tower
        return tower.sparse_keys, tower.dense_names

    def embed(self, role: str, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        """Embeddings (B, E) of one tower ("user" | "item") from its own inputs (``inputs(role)``):
        the other tower's features are looked up empty, which keeps one key set for the collection
        (a sharded one is bound to the keys it first saw)."""
        tower = self.user_tower if role == "user" else self.item_tower
        pooled = self._pooled(with_empty(sparse, self._lookup_keys))
        return tower(dense, pooled, sparse)


def tower_features(manifest: Manifest, role: str, names: list[str] | None) -> tuple[list[str], list[str]]:
    """(sparse, dense) feature names of the ``role`` ("user" | "item") tower: by default its id and
    the dataset's features of that role."""
    if manifest.kind != "interactions":
        raise ConfigError(f"two-tower needs a user-item interactions dataset; this one is {manifest.kind!r}")
    if names is None:
        names = [manifest.roles[role]] + list(manifest.roles.get(f"{role}_features", []))
    dense_known = [f.name for f in manifest.dense]
    sparse = [n for n in names if n not in dense_known]
    dense = [n for n in names if n in dense_known]
    sparse_features(manifest, sparse, f"model.{role}_features")  # names must exist
    if not sparse:
        raise ConfigError(f"model.{role}_features: the {role} tower needs at least one sparse feature, got {names}")
    return sparse, dense


def recent_name(feature: str) -> str:
    return f"{feature}_recent"


def with_recent(sparse: KeyedJaggedTensor, feature: str, n: int) -> KeyedJaggedTensor:
    """``sparse`` and, as ``<feature>_recent``, the first ``n`` ids of each of ``feature``'s lists."""
    jagged = sparse[feature]
    lengths, values = jagged.lengths(), jagged.values()
    starts = torch.cumsum(lengths, 0) - lengths
    place = torch.arange(values.numel(), device=values.device) - torch.repeat_interleave(starts, lengths)
    recent = KeyedJaggedTensor.from_lengths_sync(
        keys=[recent_name(feature)], values=values[place < n], lengths=lengths.clamp(max=n)
    )
    return KeyedJaggedTensor.concat([sparse, recent])


def with_empty(sparse: KeyedJaggedTensor, keys: list[str]) -> KeyedJaggedTensor:
    """``sparse`` and, for each of ``keys`` it lacks, a feature of empty lists."""
    missing = [k for k in keys if k not in sparse.keys()]
    if not missing:
        return sparse
    empty = KeyedJaggedTensor.from_lengths_sync(
        keys=missing,
        values=sparse.values().new_zeros(0),
        lengths=sparse.lengths().new_zeros(len(missing) * sparse.stride()),
    )
    return KeyedJaggedTensor.concat([sparse, empty])


def _shared_tables(
    tables: list[EmbeddingBagConfig], history: str | None, item: str, shared: bool
) -> list[EmbeddingBagConfig]:
    """``tables`` with the history looked up in the item id table when ``shared`` (the caller
    checked that the history's ids are the item ids' vocabulary): a history item
    is then the very vector the item tower starts from, and each item's row learns from both
    sides. The table pools by the history's pooling; for a single item id, mean and sum agree."""
    names = [t.name for t in tables]
    if not shared or history not in names or item not in names:
        return tables
    merged = dataclasses.replace(
        tables[names.index(item)], feature_names=[item, history], pooling=tables[names.index(history)].pooling
    )
    return [merged if t.name == item else t for t in tables if t.name != history]


def build_two_tower(manifest: Manifest, cfg: ModelConfig, device: torch.device | None = None) -> TwoTower:
    history = manifest.roles.get("history")
    pooled: dict[str, list[str]] = {}  # role -> the features its tower reads from the shared lookup
    dense: dict[str, list[str]] = {}
    sequences: dict[str, SequenceAttention | None] = {}
    for role in ("user", "item"):
        sparse, dense[role] = tower_features(manifest, role, getattr(cfg, f"{role}_features"))
        sequences[role] = None
        if history in sparse and cfg.history_pooling == "attention":  # an unpooled table of its own
            feature = manifest.feature(history)
            table = EmbeddingConfig(
                name=history,
                embedding_dim=cfg.embedding_dim,
                num_embeddings=feature.cardinality,
                feature_names=[history],
            )
            sequences[role] = SequenceAttention(table, max(1, feature.max_len), device=device)
            sparse = [name for name in sparse if name != history]
        pooled[role] = sparse
    looked_up = list(dict.fromkeys(pooled["user"] + pooled["item"]))  # a feature both towers read: once
    tables = embedding_tables(sparse_features(manifest, looked_up), cfg.embedding_dim, cfg.multi_hot_pooling)
    item = manifest.roles["item"]
    share = cfg.share_item_table and history is not None and manifest.feature(history).vocab == item  # same ids
    tables = _shared_tables(tables, history, item, share)
    recent = None
    if history in looked_up and cfg.history_recent > 0:  # pooled from the history's table: no new rows to learn
        recent = (history, cfg.history_recent)
        tables = [
            dataclasses.replace(t, feature_names=[*t.feature_names, recent_name(history)])
            if history in t.feature_names
            else t
            for t in tables
        ]
    sparse_arch = SparseArch(tables, device=device)
    towers = {}
    for role in ("user", "item"):
        reads = pooled[role] + ([recent_name(history)] if recent and history in pooled[role] else [])
        sequence = sequences[role]
        towers[role] = Tower(
            pooled[role] + ([sequence.feature] if sequence is not None else []),
            [sparse_arch.feature_names.index(name) for name in reads],
            cfg.embedding_dim,
            dense[role],
            cfg.tower_mlp,
            cfg.score == "cosine",
            cfg.dropout,
            sequence,
        )
    return TwoTower(
        sparse_arch,
        towers["user"],
        towers["item"],
        user_dense_index=dense_columns(manifest, dense["user"]),
        item_dense_index=dense_columns(manifest, dense["item"]),
        recent=recent,
    )
