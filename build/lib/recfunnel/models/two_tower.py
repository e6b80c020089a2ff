"""The two-tower retrieval model: a user tower and an item tower whose embeddings are scored by a
dot product (or cosine). Loss-free: the retrieval task turns embeddings into a loss.

    model = build_two_tower(manifest, config.model)
    users, items = model(batch.dense, batch.sparse)      # (B, E) each, for the batch's pairs
    model.user_tower(dense_u, kjt_u)                     # tower inputs only, e.g. for a catalogue
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recfunnel.config import ModelConfig
from recfunnel.data.format.manifest import Manifest
from recfunnel.errors import ConfigError
from recfunnel.models.features import dense_columns, select_sparse, sparse_features
from recfunnel.models.parts import SparseArch, embedding_tables, mlp

__all__ = ["Tower", "TwoTower", "build_two_tower", "tower_features"]


class Tower(nn.Module):
    """Embeddings of the tower's sparse features, concatenated with its dense features, through an
    MLP: dense (B, len(dense_names)), KJT (superset of ``sparse_keys``) -> (B, E)."""

    def __init__(
        self, sparse_arch: SparseArch, dense_names: list[str], layers: list[int], normalize: bool, dropout: float = 0.0
    ):
        super().__init__()
        self.sparse_arch = sparse_arch
        self.sparse_keys = sparse_arch.feature_names
        self.dense_names = dense_names
        width = len(self.sparse_keys) * sparse_arch.dim + len(dense_names)
        self.mlp = mlp(width, layers, dropout=dropout, last_activation=False)
        self.normalize = normalize

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        embedded = self.sparse_arch(select_sparse(sparse, self.sparse_keys)).flatten(1)
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


def build_two_tower(manifest: Manifest, cfg: ModelConfig, device: torch.device | None = None) -> TwoTower:
    towers = {}
    dense_index = {}
    for role in ("user", "item"):
        sparse, dense = tower_features(manifest, role, getattr(cfg, f"{role}_features"))
        tables = embedding_tables(sparse_features(manifest, sparse), cfg.embedding_dim, cfg.multi_hot_pooling)
        towers[role] = Tower(
            SparseArch(tables, device=device), dense, cfg.tower_mlp, cfg.score == "cosine", cfg.dropout
        )
        dense_index[role] = dense_columns(manifest, dense)
    return TwoTower(
        towers["user"], towers["item"], user_dense_index=dense_index["user"], item_dense_index=dense_index["item"]
    )
