"""Rankers: DLRM, DCNv2 and DeepFM, one class wired from named parts.

model = build_ranker("dlrm", manifest, config.model)
logits = model(batch.dense, batch.sparse)      # (B, outputs): one column per binary/regression
                                               # head, `classes` columns per multiclass head
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recfunnel.config import ModelConfig
from recfunnel.data.format.manifest import Manifest
from recfunnel.models.features import dense_columns, select_sparse, sparse_features
from recfunnel.models.parts import (
    CrossInteraction,
    DenseArch,
    DotInteraction,
    FMInteraction,
    OverArch,
    SparseArch,
    embedding_tables,
)

__all__ = ["Ranker", "build_ranker", "INTERACTIONS"]


Interaction = DotInteraction | CrossInteraction | FMInteraction


class Ranker(nn.Module):
    dense_index: torch.Tensor  # int64: the batch's dense columns this model reads

    def __init__(
        self,
        sparse_arch: SparseArch,
        dense_arch: DenseArch | None,
        interaction: Interaction,
        over_arch: OverArch,
        *,
        sparse_keys: list[str],
        dense_index: list[int],
    ):
        super().__init__()
        self.sparse_arch = sparse_arch
        self.dense_arch = dense_arch
        self.interaction = interaction
        self.over_arch = over_arch
        # which columns / keys of the loader's batch this model reads
        self.register_buffer("dense_index", torch.tensor(dense_index, dtype=torch.long), persistent=False)
        self.sparse_keys = sparse_keys

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        """dense float (B, all dense features), sparse KJT (any superset of the model's keys) -> (B, outputs)."""
        embedded = self.sparse_arch(select_sparse(sparse, self.sparse_keys))
        dense_embedded = self.dense_arch(dense[:, self.dense_index]) if self.dense_arch is not None else None
        return self.over_arch(self.interaction(dense_embedded, embedded))


# The one part in which the rankers differ: (sparse features, config, has dense) -> interaction
INTERACTIONS: dict[str, Callable[[int, ModelConfig, bool], Interaction]] = {
    "dlrm": lambda n, cfg, dense: DotInteraction(n, cfg.embedding_dim, dense),
    "dcnv2": lambda n, cfg, dense: CrossInteraction(n, cfg.embedding_dim, cfg.cross_layers, cfg.cross_low_rank, dense),
    "deepfm": lambda n, cfg, dense: FMInteraction(n, cfg.embedding_dim, dense),
}


def build_ranker(kind: str, manifest: Manifest, cfg: ModelConfig, device: torch.device | None = None) -> Ranker:
    """A ``kind`` ranker (dlrm | dcnv2 | deepfm) over the dataset's features (or ``cfg.features``).

    ``device="meta"`` defers embedding allocation to DistributedModelParallel.
    """
    sparse = sparse_features(manifest, cfg.features)
    dense_index = dense_columns(manifest, cfg.dense_features)
    tables = embedding_tables(sparse, cfg.embedding_dim, cfg.multi_hot_pooling)
    has_dense = bool(dense_index)
    interaction = INTERACTIONS[kind](len(sparse), cfg, has_dense)
    return Ranker(
        SparseArch(tables, device=device),
        DenseArch(len(dense_index), cfg.bottom_mlp, cfg.embedding_dim) if has_dense else None,
        interaction,
        OverArch(interaction.out_features, cfg.top_mlp, sum(h.outputs for h in cfg.heads), cfg.dropout),
        sparse_keys=[f.name for f in sparse],
        dense_index=dense_index,
    )
