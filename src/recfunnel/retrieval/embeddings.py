"""Embeddings of every user and item of a trained two-tower model.

    recfunnel export-embeddings --run RUN_DIR --out DIR
    -> DIR/users.parquet (user_id, embedding), DIR/items.parquet (item_id, embedding)

``user_id`` / ``item_id`` are the raw ids of the input files; ``embedding`` is a list of float32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from recfunnel.data.format.catalog import Catalog
from recfunnel.errors import RecfunnelError
from recfunnel.files import atomic_output_dir
from recfunnel.store.model import Trained, load_trained

__all__ = ["tower_embeddings", "export_embeddings"]


@torch.no_grad()
def tower_embeddings(
    trained: Trained, role: str, batch_size: int = 8192, as_of: str = "test"
) -> tuple[Catalog, np.ndarray]:
    """(catalogue, float32 (n, E) embeddings in catalogue row order) of ``role`` ("user" | "item");
    ``as_of``: the split whose moment the users' features describe (see ``Catalog.load``)."""
    if not trained.config.is_retrieval:
        raise RecfunnelError(
            f"{trained.folder}: a {trained.kind} model has no towers; embeddings come from a two-tower run"
        )
    catalog = Catalog.load(trained.folder, trained.manifest, role, as_of)
    keys, dense_names = trained.model.inputs(role)
    parts = []
    for start in range(0, len(catalog), batch_size):
        rows = np.arange(start, min(start + batch_size, len(catalog)))
        dense, kjt = catalog.inputs(rows, keys, dense_names)
        parts.append(trained.model.embed(role, dense, kjt).float().numpy())
    return catalog, np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def _table(ids: np.ndarray, id_name: str, vectors: np.ndarray) -> pa.Table:
    dim = vectors.shape[1]
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim)
    return pa.table({id_name: pa.array(ids), "embedding": embedding.cast(pa.list_(pa.float32()))})


def export_embeddings(run: str | Path, out: str | Path, overwrite: bool = False) -> dict[str, int]:
    """Write ``users.parquet`` and ``items.parquet`` into ``out`` (atomically); returns row counts."""
    trained = load_trained(run)
    counts = {}
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        for role in ("user", "item"):
            catalog, vectors = tower_embeddings(trained, role)
            pq.write_table(_table(catalog.raw_ids, f"{role}_id", vectors), Path(tmp) / f"{role}s.parquet")
            counts[f"{role}s"] = len(catalog)
        counts["dim"] = int(vectors.shape[1])
    return counts
