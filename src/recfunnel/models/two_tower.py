"""The two-tower retrieval model: a user tower and an item tower whose embeddings are scored by a
dot product (or cosine). Loss-free: the retrieval task turns embeddings into a loss.

    model = build_two_tower(manifest, config.model)
    users, items = model(batch.dense, batch.sparse)      # (B, E) each, for the batch's pairs
    model.user_tower(dense_u, kjt_u)                     # tower inputs only, e.g. for a catalogue
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recfunnel.config import ModelConfig
from recfunnel.data.format.manifest import Manifest
from recfunnel.errors import ConfigError
from recfunnel.models.features import dense_columns, select_sparse, sparse_features
from recfunnel.models.parts import SequenceAttention, SparseArch, embedding_tables, mlp

__all__ = ["Tower", "TwoTower", "build_two_tower", "tower_features"]


class Tower(nn.Module):
    """Embeddings of the tower's sparse features, concatenated with its dense features, through an
    MLP: dense (B, len(dense_names)), KJT (superset of ``sparse_keys``) -> (B, E).

    ``recent``: (feature, n) to pool a sequence feature's first n ids apart as well (the user's
    latest items beside the mean of the whole history: the next item follows the last few far
    more than the fiftieth), as the feature ``<feature>_recent`` of the same table.

    ``sequence``: a sequence feature pooled by attention (``model.history_pooling: attention``)
    instead of by the bags."""

    def __init__(
        self,
        sparse_arch: SparseArch,
        dense_names: list[str],
        layers: list[int],
        normalize: bool,
        dropout: float = 0.0,
        recent: tuple[str, int] | None = None,
        sequence: SequenceAttention | None = None,
    ):
        super().__init__()
        self.sparse_arch = sparse_arch
        self.recent = recent
        self.sequence = sequence
        derived = {recent_name(recent[0])} if recent else set()
        own = [sequence.feature] if sequence is not None else []
        self.sparse_keys = [k for k in sparse_arch.feature_names if k not in derived] + own  # the inputs
        self.dense_names = dense_names
        width = (len(sparse_arch.feature_names) + len(own)) * sparse_arch.dim + len(dense_names)
        self.mlp = mlp(width, layers, dropout=dropout, last_activation=False)
        self.normalize = normalize

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        if self.recent is not None:
            sparse = with_recent(sparse, *self.recent)
        embedded = self.sparse_arch(select_sparse(sparse, self.sparse_arch.feature_names)).flatten(1)
        if self.sequence is not None:
            embedded = torch.cat([embedded, self.sequence(select_sparse(sparse, [self.sequence.feature]))], dim=1)
        out = self.mlp(torch.cat([embedded, dense], dim=1) if self.dense_names else embedded)
        return F.normalize(out, dim=1) if self.normalize else out


class TwoTower(nn.Module):
    user_dense_index: torch.Tensor  # int64: the batch's dense columns each tower reads
    item_dense_index: torch.Tensor

    def __init__(
        self, user_tower: Tower, item_tower: Tower, *, user_dense_index: list[int], item_dense_index: list[int]
    ):
        super().__init__()
        self.user_tower = user_tower
        self.item_tower = item_tower
        self.register_buffer("user_dense_index", torch.tensor(user_dense_index, dtype=torch.long), persistent=False)
        self.register_buffer("item_dense_index", torch.tensor(item_dense_index, dtype=torch.long), persistent=False)

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch's (user, item) pairs -> user embeddings (B, E), item embeddings (B, E)."""
        return (
            self.user_tower(dense[:, self.user_dense_index], sparse),
            self.item_tower(dense[:, self.item_dense_index], sparse),
        )


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


def build_two_tower(manifest: Manifest, cfg: ModelConfig, device: torch.device | None = None) -> TwoTower:
    towers = {}
    dense_index = {}
    history = manifest.roles.get("history")
    for role in ("user", "item"):
        sparse, dense = tower_features(manifest, role, getattr(cfg, f"{role}_features"))
        sequence = None
        if history in sparse and cfg.history_pooling == "attention":  # an unpooled table of its own
            feature = manifest.feature(history)
            table = EmbeddingConfig(
                name=history,
                embedding_dim=cfg.embedding_dim,
                num_embeddings=feature.cardinality,
                feature_names=[history],
            )
            sequence = SequenceAttention(table, max(1, feature.max_len), device=device)
            sparse = [name for name in sparse if name != history]
        tables = embedding_tables(sparse_features(manifest, sparse), cfg.embedding_dim, cfg.multi_hot_pooling)
        recent = (history, cfg.history_recent) if history in sparse and cfg.history_recent > 0 else None
        if recent is not None:  # pooled from the history's own table: no new rows to learn
            tables = [
                dataclasses.replace(t, feature_names=[*t.feature_names, recent_name(history)])
                if t.name == history
                else t
                for t in tables
            ]
        towers[role] = Tower(
            SparseArch(tables, device=device),
            dense,
            cfg.tower_mlp,
            cfg.score == "cosine",
            cfg.dropout,
            recent,
            sequence,
        )
        dense_index[role] = dense_columns(manifest, dense)
    return TwoTower(
        towers["user"], towers["item"], user_dense_index=dense_index["user"], item_dense_index=dense_index["item"]
    )
