"""Named parts that rankers and towers are built from.

A ranker is ``SparseArch -> DenseArch -> interaction -> OverArch``; DLRM, DCNv2 and DeepFM differ
only in the interaction part. Shapes: B = batch, F = sparse features, D = embedding dim.
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec.modules.crossnet import CrossNet, LowRankCrossNet
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recfunnel.data.format.manifest import SparseFeature

__all__ = [
    "SequenceAttention",
    "embedding_tables",
    "mlp",
    "SparseArch",
    "DenseArch",
    "DotInteraction",
    "CrossInteraction",
    "FMInteraction",
    "OverArch",
]


def embedding_tables(
    features: list[SparseFeature], dim: int, multi_hot_pooling: str = "mean"
) -> list[EmbeddingBagConfig]:
    """One table per feature, named after it: ``cardinality`` rows of ``dim`` floats."""
    pooling = {"mean": PoolingType.MEAN, "sum": PoolingType.SUM}[multi_hot_pooling]
    return [
        EmbeddingBagConfig(
            name=f.name,
            feature_names=[f.name],
            num_embeddings=f.cardinality,
            embedding_dim=dim,
            pooling=pooling if f.multi_hot else PoolingType.SUM,
        )
        for f in features
    ]


def mlp(in_size: int, sizes: list[int], *, dropout: float = 0.0, last_activation: bool = True) -> nn.Sequential:
    """Linear layers of ``sizes`` with ReLU (and dropout) between them."""
    layers: list[nn.Module] = []
    for i, size in enumerate(sizes):
        layers.append(nn.Linear(in_size, size))
        if i < len(sizes) - 1 or last_activation:
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        in_size = size
    return nn.Sequential(*layers)


class SparseArch(nn.Module):
    """Pooled embeddings of the sparse features: KJT -> (B, F, D)."""

    def __init__(self, tables: list[EmbeddingBagConfig], device: torch.device | None = None):
        super().__init__()
        self.embedding_bag_collection = EmbeddingBagCollection(tables=tables, device=device)
        self.feature_names = [name for t in tables for name in t.feature_names]
        self.dim = tables[0].embedding_dim
        self._order: tuple[list[str], torch.Tensor] | None = None  # (keys as returned, permutation)

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        pooled = self.embedding_bag_collection(features)
        stacked = pooled.values().view(-1, len(self.feature_names), self.dim)
        keys = pooled.keys()
        if keys == self.feature_names:
            return stacked
        # sharded across ranks, the collection returns features grouped by shard: put them back
        # in the model's order, or a model trained sharded would not match itself unsharded
        if self._order is None or self._order[0] != keys:
            self._order = (keys, torch.tensor([keys.index(n) for n in self.feature_names], device=stacked.device))
        return stacked.index_select(1, self._order[1])


class SequenceAttention(nn.Module):
    """Attention pooling of a sequence feature (the history, the latest first): each item's
    embedding plus a learned embedding of its place in the sequence, scored against a learned
    query; a softmax over the sequence's items weights their embeddings. KJT -> (B, D), zeros for
    an empty sequence. The items' table is a TorchRec ``EmbeddingCollection`` (unpooled), sharded
    by DistributedModelParallel like the bags; the first ``max_len`` items are read."""

    def __init__(self, table: EmbeddingConfig, max_len: int, device: torch.device | None = None):
        super().__init__()
        self.embedding_collection = EmbeddingCollection(tables=[table], device=device)
        self.feature = table.feature_names[0]
        self.max_len = max_len
        dim = table.embedding_dim
        self.place = nn.Parameter(torch.zeros(max_len, dim))  # recency: the latest item is place 0
        self.key = nn.Linear(dim, dim)
        self.query = nn.Parameter(torch.zeros(dim))  # zeros: the mean of the sequence at the start

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        sequence = self.embedding_collection(features)[self.feature]
        items = sequence.to_padded_dense(desired_length=self.max_len)  # (B, L, D), zero-padded
        present = torch.arange(self.max_len, device=items.device)[None, :] < sequence.lengths()[:, None]
        scores = torch.tanh(self.key(items + self.place)) @ self.query  # (B, L)
        weights = torch.softmax(scores.masked_fill(~present, float("-inf")), dim=1)
        weights = torch.nan_to_num(weights) * present  # an empty sequence: all weights 0
        return (weights.unsqueeze(-1) * items).sum(dim=1)


class DenseArch(nn.Module):
    """The dense features through an MLP whose output has the embedding size: (B, Dd) -> (B, D)."""

    def __init__(self, in_features: int, hidden: list[int], dim: int):
        super().__init__()
        self.model = mlp(in_features, [*hidden, dim])

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        return self.model(dense)


def _stack(dense: torch.Tensor | None, sparse: torch.Tensor) -> torch.Tensor:
    """(B, F + 1, D) with the dense embedding first, or (B, F, D) without dense features."""
    return sparse if dense is None else torch.cat([dense.unsqueeze(1), sparse], dim=1)


class DotInteraction(nn.Module):
    """DLRM: the dense embedding and every pairwise dot product of the F + 1 vectors.

    (B, D), (B, F, D) -> (B, D + (F + 1) F / 2)
    """

    pairs: torch.Tensor  # int64 (P,): flat positions of the upper-triangle pairs

    def __init__(self, num_sparse: int, dim: int, has_dense: bool = True):
        super().__init__()
        n = num_sparse + int(has_dense)
        rows, cols = torch.triu_indices(n, n, offset=1)
        # the upper triangle as positions in the flattened (n * n) product: index_select there
        # trains ~1.6x faster than indexing [:, rows, cols], whose backward is an index_put
        self.register_buffer("pairs", rows * n + cols, persistent=False)
        self.out_features = (dim if has_dense else 0) + len(rows)

    def forward(self, dense: torch.Tensor | None, sparse: torch.Tensor) -> torch.Tensor:
        stacked = _stack(dense, sparse)
        dots = torch.bmm(stacked, stacked.transpose(1, 2)).flatten(1).index_select(1, self.pairs)
        return dots if dense is None else torch.cat([dense, dots], dim=1)


class CrossInteraction(nn.Module):
    """DCNv2: all embeddings concatenated, through ``layers`` cross layers (full or low rank).

    (B, D), (B, F, D) -> (B, (F + 1) D)
    """

    def __init__(self, num_sparse: int, dim: int, layers: int, low_rank: int = 0, has_dense: bool = True):
        super().__init__()
        self.out_features = (num_sparse + int(has_dense)) * dim
        self.cross = (
            LowRankCrossNet(self.out_features, layers, low_rank) if low_rank else CrossNet(self.out_features, layers)
        )

    def forward(self, dense: torch.Tensor | None, sparse: torch.Tensor) -> torch.Tensor:
        return self.cross(_stack(dense, sparse).flatten(1))


class FMInteraction(nn.Module):
    """DeepFM: the factorisation machine's second-order term beside the flat embeddings for the
    deep part (the over arch), as in TorchRec's DeepFM. (B, D), (B, F, D) -> (B, (F + 1) D + 1)
    """

    def __init__(self, num_sparse: int, dim: int, has_dense: bool = True):
        super().__init__()
        self.out_features = (num_sparse + int(has_dense)) * dim + 1

    def forward(self, dense: torch.Tensor | None, sparse: torch.Tensor) -> torch.Tensor:
        stacked = _stack(dense, sparse)
        fm = 0.5 * (stacked.sum(1).square() - stacked.square().sum(1)).sum(1, keepdim=True)
        return torch.cat([stacked.flatten(1), fm], dim=1)


class OverArch(nn.Module):
    """The top MLP and a linear output: (B, in) -> logits (B, outputs)."""

    def __init__(self, in_features: int, hidden: list[int], outputs: int, dropout: float = 0.0):
        super().__init__()
        self.model = nn.Sequential(
            mlp(in_features, hidden, dropout=dropout), nn.Linear(hidden[-1] if hidden else in_features, outputs)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model(features)
