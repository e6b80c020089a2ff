"""Losses: models return logits or embeddings, a loss object turns them into a scalar.

Ranking: one head per label (BCE, MSE or cross-entropy), summed with per-head weights.
Retrieval: in-batch sampled softmax with logQ correction (default) or pointwise BCE.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from recfunnel.config import HeadConfig, RetrievalConfig
from recfunnel.data.format.manifest import Manifest
from recfunnel.errors import ConfigError

__all__ = ["RankingLoss", "RetrievalLoss", "StreamingFrequency", "listwise_loss"]


class RankingLoss:
    """Per-head losses of a ranker's logits (B, outputs) against the batch's labels (B, L)."""

    def __init__(self, heads: list[HeadConfig], manifest: Manifest):
        names = [label.name for label in manifest.labels]
        self.heads = heads
        self.columns: list[int] = []
        for i, head in enumerate(heads):
            if head.label not in names:
                raise ConfigError(f"model.heads[{i}].label: no label {head.label!r} in the dataset; it has {names}")
            self.columns.append(names.index(head.label))
        self.slices: list[slice] = []
        start = 0
        for head in heads:
            self.slices.append(slice(start, start + head.outputs))
            start += head.outputs

    def head_outputs(self, logits: torch.Tensor) -> list[torch.Tensor]:
        """Each head's logits: (B,) for binary/regression, (B, classes) for multiclass."""
        return [logits[:, s] if h.kind == "multiclass" else logits[:, s.start] for h, s in zip(self.heads, self.slices)]

    def losses(self, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted mean loss of every head, by label name, plus their weighted sum as "loss"."""
        total_weight = weights.sum().clamp_min(1.0)
        out: dict[str, torch.Tensor] = {}
        total = logits.new_zeros(())
        for head, column, output in zip(self.heads, self.columns, self.head_outputs(logits)):
            target = labels[:, column]
            if head.kind == "binary":
                per_row = F.binary_cross_entropy_with_logits(output, target, reduction="none")
            elif head.kind == "regression":
                per_row = F.mse_loss(output, target, reduction="none")
            else:
                per_row = F.cross_entropy(output, target.long(), reduction="none")
            loss = (per_row * weights).sum() / total_weight
            out[head.label] = loss
            total = total + head.weight * loss
        out["loss"] = total
        return out


def listwise_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, list_rows: int) -> torch.Tensor:
    """Softmax cross-entropy over each candidate list (ListNet with 0/1 labels): every ``list_rows``
    consecutive rows are one list; a list's loss is the mean over its positives of -log softmax,
    averaged over the lists that hold a positive. Rows of weight 0 (padding) take no part.
    ``logits``, ``labels``, ``weights``: (B,)."""
    pad = (-len(logits)) % list_rows  # a batch's tail that is not a whole list: padding rows
    if pad:
        logits, labels, weights = (F.pad(t, (0, pad)) for t in (logits, labels, weights))
    live = (weights > 0).view(-1, list_rows)
    scores = logits.view(-1, list_rows).float().masked_fill(~live, -torch.inf)
    target = ((labels > 0) & (weights > 0)).view(-1, list_rows).float()
    positives = target.sum(dim=1)
    has = positives > 0
    if not has.any():
        return logits.sum() * 0.0  # keeps the graph: every rank steps together
    log_p = torch.log_softmax(scores[has], dim=1).masked_fill(~live[has], 0.0)
    return (-(log_p * target[has]).sum(dim=1) / positives[has]).mean()


class StreamingFrequency:
    """Expected count of each item in a training batch, estimated from the stream of batches seen
    so far: running counts with an exponential decay (``half_life`` steps), so an item's estimate
    follows a drifting stream, and a half-count prior so unseen items are not infinitely rare.
    This is the logQ of sampled-softmax correction (Yi et al., RecSys 2019), estimated with
    counts instead of the paper's hashed inter-arrival times: exact for catalogues that fit in
    memory, and it converges in one pass where the moving average of gaps needs many sightings.
    """

    def __init__(self, num_items: int, batch_size: int, half_life: float = 1000.0):
        self.growth = 0.5 ** (-1.0 / half_life)
        # Decay without touching every item each step: new counts are added with a weight that
        # grows by 1/decay per step, and reads divide by it (O(batch) per step, not O(items)).
        self.counts = torch.zeros(num_items, dtype=torch.float64)
        self.rows = 0.0
        self.weight = 1.0
        self.batch_size = batch_size
        self.prior = 0.5

    def update(self, items: torch.Tensor) -> None:
        self.weight *= self.growth
        if self.weight > 1e100:  # rescale long before float64 overflows
            self.counts /= self.weight
            self.rows /= self.weight
            self.weight = 1.0
        items = items.cpu()
        self.counts.index_add_(0, items, torch.full(items.shape, self.weight, dtype=torch.float64))
        self.rows += len(items) * self.weight

    def probability(self, items: torch.Tensor) -> torch.Tensor:
        """Expected times each of ``items`` (int64) appears in a batch of ``batch_size`` rows."""
        counts = self.counts[items.cpu()] / self.weight
        share = (counts + self.prior) / (self.rows / self.weight + self.prior * len(self.counts))
        return (share * self.batch_size).float().to(items.device)


class RetrievalLoss:
    """Loss of a two-tower model on a batch of (user, item) rows.

    softmax: the rows with a positive label are pairs; each user's item is the target and the
    batch's other items (plus ``extra_negatives`` sampled items) are negatives. Logits are
    ``score / temperature - log q(item)`` with q the expected count of the item among the
    candidates (logQ correction), and candidates equal to the target are masked (accidental hits).
    bce: every row is a labelled pair; loss = BCE(score, label).
    """

    def __init__(
        self,
        cfg: RetrievalConfig,
        *,
        num_items: int,
        batch_size: int,
        label_column: int = 0,
        item_popularity: np.ndarray | None = None,
        seed: int = 0,
    ):
        self.cfg = cfg
        self.num_items = num_items
        self.label_column = label_column
        self.frequency = StreamingFrequency(num_items, batch_size)
        self.generator = torch.Generator().manual_seed(seed)
        self.popularity = None
        if item_popularity is not None:
            p = torch.as_tensor(item_popularity, dtype=torch.float64).clamp_min(0)
            p[0] = 0  # never sample the OOV row
            self.popularity = (p / p.sum()).float()

    def sample_negatives(self) -> torch.Tensor:
        """``extra_negatives`` item indices (>= 1) and their expected counts among the samples."""
        m = self.cfg.extra_negatives
        if self.cfg.negative_sampler == "popularity" and self.popularity is not None:
            return torch.multinomial(self.popularity, m, replacement=True, generator=self.generator)
        return torch.randint(1, self.num_items, (m,), generator=self.generator)

    def _sample_probability(self, items: torch.Tensor) -> torch.Tensor:
        m = self.cfg.extra_negatives
        if not m:
            return torch.zeros(items.shape, device=items.device)
        if self.cfg.negative_sampler == "popularity" and self.popularity is not None:
            return m * self.popularity[items.cpu()].to(items.device)
        return torch.full(items.shape, m / (self.num_items - 1), device=items.device)

    def softmax_loss(
        self,
        users: torch.Tensor,
        items: torch.Tensor,
        item_ids: torch.Tensor,
        weights: torch.Tensor,
        negatives: torch.Tensor | None = None,
        negative_ids: torch.Tensor | None = None,
        train: bool = True,
    ) -> torch.Tensor:
        """users, items: (B, E) embeddings of positive pairs; item_ids int64 (B,); negatives (M, E)."""
        if train:
            self.frequency.update(item_ids)
        candidates, candidate_ids = items, item_ids
        if negatives is not None:
            candidates = torch.cat([items, negatives])
            candidate_ids = torch.cat([item_ids, negative_ids])
        logits = users @ candidates.T / self.cfg.temperature
        if self.cfg.logq_correction:
            q = self.frequency.probability(candidate_ids) + self._sample_probability(candidate_ids)
            logits = logits - torch.log(q.clamp_min(1e-12))
        target = torch.arange(len(users), device=users.device)
        if self.cfg.remove_accidental_hits:
            hits = item_ids[:, None] == candidate_ids[None, :]
            hits[target, target] = False
            logits = logits.masked_fill(hits, -math.inf)
        per_row = F.cross_entropy(logits, target, reduction="none")
        return (per_row * weights).sum() / weights.sum().clamp_min(1.0)

    def bce_loss(
        self, users: torch.Tensor, items: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        scores = (users * items).sum(1)
        per_row = F.binary_cross_entropy_with_logits(
            scores, (labels[:, self.label_column] > 0).float(), reduction="none"
        )
        return (per_row * weights).sum() / weights.sum().clamp_min(1.0)
