"""What the loop needs to know of each kind of model: how a batch becomes a loss, and how a split
is evaluated. Ranking objectives wrap a :class:`RankingLoss`, retrieval ones a :class:`RetrievalLoss`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from recfunnel.config import RunConfig
from recfunnel.data.format.catalog import Catalog
from recfunnel.data.format.manifest import Manifest
from recfunnel.data.format.pairs import earlier_splits, item_popularity, read_pairs
from recfunnel.data.stream.loader import Batch, StreamingBatchLoader
from recfunnel.metrics.ranking import accuracy, binary_metrics, list_metrics, regression_metrics
from recfunnel.metrics.retrieval import evaluate_topk, tfrs_accuracy
from recfunnel.train.losses import RankingLoss, RetrievalLoss, listwise_loss
from recfunnel.train.negatives import NegativeSampler

__all__ = ["RankingObjective", "RetrievalObjective", "gather", "sync", "list_ks"]


def list_ks(config: RunConfig) -> list[int]:
    """The cut-offs of a two-stage ranker's list metrics: ``eval.ks`` within a list's length."""
    return [k for k in config.eval.ks if k <= config.ranking.candidates] or [config.ranking.candidates]


def gather(array: np.ndarray) -> np.ndarray:
    """Rows of ``array`` from every rank, concatenated in rank order."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return array
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, array)
    return np.concatenate(parts)


def sync() -> None:
    """Wait for every rank (no-op alone)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _inner(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DistributedModelParallel wraps the model


class RankingObjective:
    def __init__(self, config: RunConfig, manifest: Manifest, data: str | Path):
        self.criterion = RankingLoss(config.model.heads, manifest)
        self.config = config
        self.manifest = manifest
        self.data = str(data)
        self.predictions: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # the last, by split
        self.negatives = None
        # candidate lists (a two-stage ranker's data): whole lists of list_rows rows, in the retriever's order
        self.list_rows = int(manifest.extra.get("list_rows", 0))
        self.listwise = bool(self.list_rows) and config.ranking.loss == "listwise"
        if config.train.sampled_negatives:
            self.negatives = NegativeSampler(
                manifest,
                data,
                config.train.sampled_negatives,
                config.train.seed + 7919 * (dist.get_rank() if dist.is_initialized() else 0),
                by=config.train.negative_sampling,
            )

    def loss(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        if self.negatives is not None:
            batch = self.negatives(batch.to(torch.device("cpu"))).to(batch.dense.device)
        logits = model(batch.dense, batch.sparse)
        if self.listwise:
            labels = batch.labels[:, self.criterion.columns[0]]
            return {"loss": listwise_loss(logits[:, 0], labels, batch.weights, self.list_rows)}
        return self.criterion.losses(logits, batch.labels, batch.weights)

    def state_dict(self) -> dict[str, Any]:
        return {"negatives": self.negatives.generator.get_state()} if self.negatives is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.negatives is not None and "negatives" in state:
            self.negatives.generator.set_state(state["negatives"])

    @torch.no_grad()
    def predict(self, model: nn.Module, split: str, device: torch.device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(logits (n, outputs), labels (n, L), weights (n,)) of a whole split, all ranks together."""
        logits, labels, weights = [], [], []
        with StreamingBatchLoader(
            self.data, split, batch_size=self.config.eval.batch_size, shuffle=False, manifest=self.manifest
        ) as loader:
            generator = self.negatives.eval_generator(split) if self.negatives is not None else None
            for batch in loader:
                if self.negatives is not None:
                    batch = self.negatives(batch, generator)
                batch = batch.to(device)
                logits.append(model(batch.dense, batch.sparse).float().cpu().numpy())
                labels.append(batch.labels.cpu().numpy())
                weights.append(batch.weights.cpu().numpy())
            # gathered before the loader closes: a rank that frees its shared memory early could
            # pull it from under a rank still opening it
            out = gather(np.concatenate(logits)), gather(np.concatenate(labels)), gather(np.concatenate(weights))
        sync()  # and every rank has closed it before any opens the next one
        return out

    def evaluate(self, model: nn.Module, split: str, device: torch.device) -> dict[str, float]:
        logits, labels, weights = self.predict(model, split, device)
        self.predictions[split] = (logits, labels, weights)
        keep = weights > 0
        logits, labels, weights = logits[keep], labels[keep], weights[keep]
        out: dict[str, float] = {}
        heads = self.criterion.heads
        losses = self.criterion.losses(torch.from_numpy(logits), torch.from_numpy(labels), torch.from_numpy(weights))
        for head, column, sl in zip(heads, self.criterion.columns, self.criterion.slices):
            prefix = "" if len(heads) == 1 else f"{head.label}_"
            target = labels[:, column]
            if head.kind == "binary":
                metrics = binary_metrics(target, logits[:, sl.start], weights)
            elif head.kind == "regression":
                metrics = regression_metrics(target, logits[:, sl.start], weights)
            else:
                metrics = {"accuracy": accuracy(target.astype(np.int64), logits[:, sl])}
            out.update({f"{prefix}{k}": float(v) for k, v in metrics.items()})
            if len(heads) > 1:
                out[f"{prefix}loss"] = float(losses[head.label])
        out["loss"] = float(losses["loss"])
        if self.list_rows:
            out.update(self._list_metrics(logits[:, 0], labels[:, self.criterion.columns[0]]))
        return out

    def _list_metrics(self, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """The ranker's order of each candidate list beside the retriever's (the rows' order)."""
        n = self.list_rows
        scores, labels = logits.reshape(-1, n), labels.reshape(-1, n)
        ks = tuple(list_ks(self.config))
        retriever = list_metrics(np.broadcast_to(-np.arange(n, dtype=np.float64), scores.shape), labels, ks)
        return {**list_metrics(scores, labels, ks), **{f"retrieval_{k}": v for k, v in retriever.items()}}


class RetrievalObjective:
    """Two-tower training on the train split's pairs; evaluation ranks ALL items for every user of
    the split, with the user's earlier-split items (train, and val when testing) excluded."""

    def __init__(self, config: RunConfig, manifest: Manifest, data: str | Path, model: nn.Module):
        self.config = config
        self.data = str(data)
        self.manifest = manifest
        self.users = Catalog.load(data, manifest, "user")  # as of the test split (and serving)
        self.users_at_val = Catalog.load(data, manifest, "user", as_of="val")  # history: training rows only
        self.items = Catalog.load(data, manifest, "item")
        self.item_key = manifest.roles["item"]
        n_items = manifest.feature(self.item_key).cardinality
        self.train_pairs = read_pairs(data, "train")
        self._pairs: dict[str, Any] = {}
        self._exclusions: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        popularity = item_popularity(self.train_pairs, n_items)
        self.criterion = RetrievalLoss(
            config.retrieval,
            num_items=n_items,
            batch_size=config.train.batch_size,
            item_popularity=popularity,
            seed=config.train.seed,
        )
        towers = _inner(model)
        self.user_inputs = towers.inputs("user")
        self.item_inputs = towers.inputs("item")

    def state_dict(self) -> dict[str, Any]:
        """What training changes besides the model: the item-frequency estimate and the negative sampler."""
        f = self.criterion.frequency
        return {
            "counts": f.counts.clone(),
            "rows": f.rows,
            "weight": f.weight,
            "generator": self.criterion.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        f = self.criterion.frequency
        f.counts.copy_(state["counts"])
        f.rows, f.weight = float(state["rows"]), float(state["weight"])
        self.criterion.generator.set_state(state["generator"])

    def loss(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        users, items = model(batch.dense, batch.sparse)
        if self.config.retrieval.loss == "bce":
            return {"loss": self.criterion.bce_loss(users, items, batch.labels, batch.weights)}
        keep = (batch.labels[:, self.criterion.label_column] > 0) & (batch.weights > 0)
        item_ids = batch.sparse[self.item_key].values()
        negatives = negative_ids = None
        if self.config.retrieval.extra_negatives:
            negative_ids = self.criterion.sample_negatives()
            dense, kjt = self.items.inputs(self.items.positions_of(negative_ids.numpy()), *self.item_inputs)
            negatives = _inner(model).embed("item", dense.to(users.device), kjt.to(users.device))
            negative_ids = negative_ids.to(users.device)
        loss = self.criterion.softmax_loss(
            users[keep], items[keep], item_ids[keep], batch.weights[keep], negatives, negative_ids
        )
        return {"loss": loss}

    @torch.no_grad()
    def embeddings(self, model: nn.Module, role: str, device: torch.device, split: str = "test") -> torch.Tensor:
        """(cardinality, E) embeddings by id-feature index; row 0 (OOV) and unknown rows are 0.
        Users as of ``split``: their history holds what was known then."""
        catalog = self.items if role == "item" else self.users_at_val if split == "val" else self.users
        towers = _inner(model)
        keys, dense_names = self.user_inputs if role == "user" else self.item_inputs
        out = None
        step = self.config.eval.batch_size
        for start in range(0, len(catalog), step):
            rows = np.arange(start, min(start + step, len(catalog)))
            dense, kjt = catalog.inputs(rows, keys, dense_names)
            emb = towers.embed(role, dense.to(device), kjt.to(device)).float().cpu()
            if out is None:
                out = torch.zeros(catalog.cardinality, emb.shape[1])
            out[torch.from_numpy(catalog.index[rows])] = emb
        return out

    def pairs(self, split: str) -> Any:
        """A split's pairs, read once (evaluation runs every epoch)."""
        if split not in self._pairs:
            self._pairs[split] = self.train_pairs if split == "train" else read_pairs(self.data, split)
        return self._pairs[split]

    def exclusions(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(users, items) a user has seen by the time of ``split``: left out of its ranking (built
        once: every epoch's evaluation and every baseline asks)."""
        if split not in self._exclusions:
            pairs = [self.pairs(s) for s in earlier_splits(split, self.manifest.splits)]
            self._exclusions[split] = np.concatenate([p.users for p in pairs]), np.concatenate([p.items for p in pairs])
        return self._exclusions[split]

    def relevant(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The split's positive (user, item) pairs of users seen before it (in an earlier split): a
        user new at a global time cut is a cold start, which no model of their past can serve."""
        pairs = self.pairs(split)
        seen = np.unique(self.exclusions(split)[0])
        keep = (pairs.labels > 0) & np.isin(pairs.users, seen)
        return pairs.users[keep], pairs.items[keep]

    def evaluate_scores(self, score_users, split: str, no_exclusion: bool = False) -> dict[str, float]:
        users, items = self.relevant(split)
        n_items = self.manifest.feature(self.item_key).cardinality - 1
        ex_users, ex_items = self.exclusions(split)
        out = evaluate_topk(
            score_users,
            test_users=users,
            test_items=items,
            n_items=n_items,
            exclude_users=ex_users,
            exclude_items=ex_items,
            ks=tuple(self.config.eval.ks),
        )
        if no_exclusion:
            out.update(tfrs_accuracy(score_users, users, items, n_items, tuple(self.config.eval.ks)))
        return {k: float(v) for k, v in out.items() if k not in ("users", "pairs")}  # counts, not metrics

    def evaluate(
        self, model: nn.Module, split: str, device: torch.device, no_exclusion: bool = False
    ) -> dict[str, float]:
        user_emb = self.embeddings(model, "user", device, split)
        item_emb = self.embeddings(model, "item", device)
        return self.evaluate_scores(lambda u: user_emb[torch.from_numpy(u)] @ item_emb.T, split, no_exclusion)
