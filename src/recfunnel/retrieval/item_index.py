"""The item index of a two-tower run: its items' vectors under the training score's metric.

    recfunnel index --run RUN_DIR --out INDEX_DIR [--kind exact|ivf|hnsw]

    INDEX_DIR/
        vectors/         the VectorIndex (faiss index, raw item ids, params)
        index.json       the run it came from (and its weights' digest), kind, metric, build report

What serving also needs of the training data (each user's seen items, item popularity) lives in
the run's model folder (:mod:`recfunnel.store`), not here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recfunnel.errors import DataError, RecfunnelError
from recfunnel.files import atomic_output_dir
from recfunnel.retrieval.embeddings import tower_embeddings
from recfunnel.retrieval.index import VectorIndex
from recfunnel.retrieval.index_build import BuildReport, build_index
from recfunnel.store.model import Trained, load_trained, model_digest

__all__ = ["ItemIndex", "build_and_save"]

META = "index.json"


@dataclass
class ItemIndex:
    vectors: VectorIndex  # raw item ids -> item tower vectors (any VectorSearch will do)
    meta: dict[str, Any]

    @classmethod
    def load(cls, folder: str | Path) -> ItemIndex:
        folder = Path(folder)
        if not (folder / META).is_file():
            raise DataError(f"{folder}: not an index folder (no {META}); build one with `recfunnel index`")
        return cls(VectorIndex.load(folder / "vectors"), json.loads((folder / META).read_text()))

    @classmethod
    def build(cls, trained: Trained, kind: str = "exact", **params: Any) -> tuple[ItemIndex, BuildReport]:
        """Item vectors of ``trained`` (a two-tower model) indexed with the training score's metric."""
        catalog, vectors = tower_embeddings(trained, "item")
        metric = trained.config.model.score  # dot -> inner product; cosine -> normalised vectors
        # recall is measured on real queries: the users' vectors (a sample of them)
        queries = tower_embeddings(trained, "user")[1] if kind != "exact" else None
        index, report = build_index(catalog.raw_ids, vectors, kind, metric, queries=queries, **params)
        meta = {
            "kind": kind,
            "metric": metric,
            "run": str(trained.folder.resolve()),
            "model_digest": model_digest(trained.folder),  # the weights the vectors came from
            "items": len(catalog),
            "dim": int(vectors.shape[1]),
            "build": report.as_dict(),
        }
        return cls(index, meta), report

    def matches(self, trained: Trained) -> bool | None:
        """Whether this index holds ``trained``'s item vectors (None: an index from before digests)."""
        digest = self.meta.get("model_digest")
        return None if digest is None else digest == model_digest(trained.folder)

    def rebuilt_for(self, trained: Trained) -> ItemIndex:
        """An index of the same kind and parameters for ``trained`` (another model's weights)."""
        build = self.meta.get("build", {})
        return ItemIndex.build(trained, self.meta.get("kind", "exact"), **build.get("params", {}))[0]

    def save(self, out: str | Path, overwrite: bool = False) -> Path:
        with atomic_output_dir(out, overwrite=overwrite) as tmp:
            self.vectors.save(tmp / "vectors")
            (tmp / META).write_text(json.dumps(self.meta, indent=2) + "\n")
        return Path(out)


def build_and_save(
    run: str | Path, out: str | Path, kind: str = "exact", overwrite: bool = False, **params: Any
) -> BuildReport:
    """``recfunnel index``: build the item index of a two-tower run and write it to ``out``."""
    trained = load_trained(run)
    if not trained.config.is_retrieval:
        raise RecfunnelError(f"{run}: a {trained.kind} run has no item tower; index a two-tower run")
    item_index, report = ItemIndex.build(trained, kind, **params)
    item_index.save(out, overwrite=overwrite)
    return report
