"""The funnel's index folder: the items' vectors from a two-tower run, plus what serving needs to
know of the training data (each user's seen items, item popularity), so that it runs without the
dataset.

    recfunnel index --run RUN_DIR --out INDEX_DIR [--kind exact|ivf|hnsw]

    INDEX_DIR/
        vectors/         the VectorIndex (faiss index, raw item ids, params)
        seen.npz         CSR: user index -> item indices of the training (and validation) pairs, any label
        popularity.npy   float64 (item cardinality,): training interactions per item index
        index.json       the run it came from, kind, metric, build report (recall vs exact)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recfunnel.data.pairs import read_pairs
from recfunnel.data.shards import atomic_output_dir
from recfunnel.errors import DataError, RecfunnelError
from recfunnel.retrieval.embeddings import tower_embeddings
from recfunnel.retrieval.index import VectorIndex
from recfunnel.retrieval.index_build import BuildReport, build_index
from recfunnel.train.artifacts import Trained, load_trained

__all__ = ["FunnelIndex", "build_funnel_index", "run_data"]

META = "index.json"


@dataclass
class FunnelIndex:
    vectors: VectorIndex  # raw item ids -> item tower vectors (any VectorSearch will do)
    seen_indptr: np.ndarray  # int64 (users + 1,) by user index
    seen_items: np.ndarray  # int64: item indices
    popularity: np.ndarray  # float64 (item cardinality,)
    meta: dict[str, Any]

    def seen(self, user_index: int) -> np.ndarray:
        """Item indices the user interacted with in training (empty for unknown users)."""
        if not 0 < user_index < len(self.seen_indptr) - 1:
            return np.zeros(0, np.int64)
        return self.seen_items[self.seen_indptr[user_index]:self.seen_indptr[user_index + 1]]

    @classmethod
    def load(cls, folder: str | Path) -> "FunnelIndex":
        folder = Path(folder)
        if not (folder / META).is_file():
            raise DataError(f"{folder}: not an index folder (no {META}); build one with `recfunnel index`")
        seen = np.load(folder / "seen.npz")
        return cls(VectorIndex.load(folder / "vectors"), seen["indptr"], seen["items"],
                   np.load(folder / "popularity.npy"), json.loads((folder / META).read_text()))

    @classmethod
    def build(cls, trained: Trained, data: str | Path, kind: str = "exact", **params: Any
              ) -> tuple["FunnelIndex", BuildReport]:
        """Item vectors of ``trained`` (a two-tower model) indexed with the training score's metric."""
        catalog, vectors = tower_embeddings(trained, "item")
        metric = trained.config.model.score  # dot -> inner product; cosine -> normalised vectors
        # recall is measured on real queries: the users' vectors (a sample of them)
        queries = tower_embeddings(trained, "user")[1] if kind != "exact" else None
        index, report = build_index(catalog.raw_ids, vectors, kind, metric, queries=queries, **params)
        users = trained.manifest.feature(trained.manifest.roles["user"]).cardinality
        items = trained.manifest.feature(trained.manifest.roles["item"]).cardinality
        seen_users, seen_items = [], []
        for split in ("train", "val"):
            try:
                pairs = read_pairs(data, split)
            except DataError:
                if split == "train":
                    raise
                continue
            # seen: every interaction, liked or not (a rated item is not news); popularity: positives
            seen_users.append(pairs.users)
            seen_items.append(pairs.items)
            if split == "train":
                popularity = np.bincount(pairs.items[pairs.labels > 0], minlength=items).astype(np.float64)
        u, i = np.concatenate(seen_users), np.concatenate(seen_items)
        order = np.lexsort((i, u))
        indptr = np.zeros(users + 1, np.int64)
        np.cumsum(np.bincount(u, minlength=users), out=indptr[1:])
        meta = {"kind": kind, "metric": metric, "run": str(trained.folder.resolve()), "data": str(data),
                "items": len(catalog), "dim": int(vectors.shape[1]), "build": report.as_dict()}
        return cls(index, indptr, i[order], popularity, meta), report

    def save(self, out: str | Path, overwrite: bool = False) -> Path:
        with atomic_output_dir(out, overwrite=overwrite) as tmp:
            self.vectors.save(tmp / "vectors")
            np.savez(tmp / "seen.npz", indptr=self.seen_indptr, items=self.seen_items)
            np.save(tmp / "popularity.npy", self.popularity)
            (tmp / META).write_text(json.dumps(self.meta, indent=2) + "\n")
        return Path(out)


def run_data(run: str | Path, data: str | Path | None = None) -> Path:
    """The dataset a run trained on (its metrics.json says), or ``data`` when given."""
    if data is not None:
        return Path(data)
    for path in (Path(run) / "metrics.json", Path(run).parent / "metrics.json"):
        if path.is_file():
            recorded = Path(json.loads(path.read_text())["data"])
            if recorded.is_dir():
                return recorded
            raise RecfunnelError(f"{path}: the run trained on {recorded}, which is not here; pass --data DIR")
    raise RecfunnelError(f"{run}: no metrics.json saying which dataset it trained on; pass --data DIR")


def build_and_save(run: str | Path, out: str | Path, kind: str = "exact", data: str | Path | None = None,
                   overwrite: bool = False, **params: Any) -> BuildReport:
    """``recfunnel index``: build the funnel's index of a two-tower run and write it to ``out``."""
    trained = load_trained(run)
    if not trained.config.is_retrieval:
        raise RecfunnelError(f"{run}: a {trained.kind} run has no item tower; index a two-tower run")
    funnel_index, report = FunnelIndex.build(trained, run_data(run, data), kind, **params)
    funnel_index.save(out, overwrite=overwrite)
    return report
