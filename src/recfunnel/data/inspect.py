"""What a prepared dataset holds, and what the loader makes of it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recfunnel.data.format.manifest import Manifest, load_manifest
from recfunnel.data.format.shards import check_shards
from recfunnel.data.format.vocab import Vocab
from recfunnel.report import table

__all__ = ["print_dataset_summary", "inspect_dataset", "validate_dataset"]


def print_dataset_summary(folder: str | Path, manifest: Manifest) -> None:
    """Splits, features and labels of a dataset as tables."""
    print(
        f"dataset {folder} ({manifest.kind}, from {manifest.source.get('kind', '?')}"
        f"{' ' + manifest.source['variant'] if manifest.source.get('variant') else ''})"
    )
    split_rows = [
        [name, info.rows, sum(c for c, _ in info.blocks), info.positives] for name, info in manifest.splits.items()
    ]
    print(table(split_rows, ["split", "rows", "blocks", "positive share"]))
    feats: list[list[Any]] = [[f.name, "dense", f.transform, None] for f in manifest.dense]
    feats += [[f.name, "multi-hot" if f.multi_hot else "sparse", f.encoding, f.cardinality] for f in manifest.sparse]
    print(table(feats, ["feature", "kind", "encoding", "cardinality"]))
    print(
        "labels: "
        + ", ".join(f"{lab.name} ({lab.kind}{': ' + lab.rule if lab.rule else ''})" for lab in manifest.labels)
    )
    split_desc = ", ".join(f"{k}={v}" for k, v in manifest.split.items())
    print(f"split: {split_desc}")
    extras = {k: v for k, v in manifest.extra.items() if k not in ("generator", "dense_stats")}
    if extras:
        print(", ".join(f"{k}: {json.dumps(v)}" for k, v in extras.items()))


def inspect_dataset(folder: str, *, batch_size: int = 4, as_json: bool = False) -> None:
    """Print the summary, one epoch of the train loader (rows, batches, rows/s) and a few rows."""
    # the loader (torch, TorchRec) only here: `recfunnel prepare` prints the summary without it
    from recfunnel.data.stream.loader import StreamingBatchLoader

    manifest = load_manifest(folder)
    if as_json:
        print(json.dumps(manifest.to_dict(), indent=2))
        return
    print_dataset_summary(folder, manifest)
    split = "train" if "train" in manifest.splits else next(iter(manifest.splits))
    loader = StreamingBatchLoader(folder, split, batch_size=8192, shuffle=True)
    start, rows, real, batches = time.perf_counter(), 0, 0.0, 0
    first = None
    for batch in loader:
        first = first or batch
        rows += len(batch)
        real += float(batch.weights.sum())
        batches += 1
    seconds = time.perf_counter() - start
    print(
        f"\nloader, one epoch of {split!r}: {int(real):,} rows in {batches} batches of up to 8,192, "
        f"{rows / seconds:,.0f} rows/s"
    )
    if first is not None:
        print(
            f"a batch: dense {tuple(first.dense.shape)}, sparse KeyedJaggedTensor keys {first.sparse.keys()}, "
            f"labels {tuple(first.labels.shape)}, weights {tuple(first.weights.shape)}"
        )
        _print_rows(folder, manifest, first, batch_size)


def _print_rows(folder: str, manifest: Manifest, batch, n: int) -> None:
    """The first ``n`` rows of a batch, sparse ids shown as raw values where a vocabulary exists."""
    n = min(n, len(batch))
    jagged = batch.sparse.to_dict()
    headers: list[str] = []
    columns: list[list[Any]] = []
    for key in manifest.sparse_keys[:7]:
        offsets = np.concatenate([[0], np.cumsum(jagged[key].lengths().numpy())])
        values = jagged[key].values().numpy()
        shown = _raw_values(folder, manifest, key, values)
        headers.append(key)
        columns.append([" ".join(map(str, shown[offsets[i] : offsets[i + 1]])) for i in range(n)])
        if key == manifest.roles.get("item"):
            titles = _titles(folder, values[:n])
            if titles is not None:
                headers.append("title")
                columns.append([t[:32] for t in titles])
    for j, lab in enumerate(manifest.labels):
        headers.append(lab.name)
        columns.append([float(batch.labels[i, j]) for i in range(n)])
    rows = [[col[i] for col in columns] for i in range(n)]
    print(table(rows, headers, title=f"first {n} rows (raw values; '?' = out of vocabulary)"))


def _raw_values(folder: str, manifest: Manifest, key: str, indices: np.ndarray) -> list:
    vocab = manifest.feature(key).vocab or key
    if manifest.feature(key).encoding != "vocab" or not (Path(folder) / "vocab" / f"{vocab}.parquet").is_file():
        return indices.tolist()
    return ["?" if v is None else v for v in Vocab.load(Path(folder) / "vocab", vocab).decode(indices)]


def _titles(folder: str, item_indices: np.ndarray) -> list[str] | None:
    path = Path(folder) / "items.parquet"
    if not path.is_file():
        return None
    items = pd.read_parquet(path, columns=None)
    if "title" not in items.columns:
        return None
    by_index = dict(zip(items["item_index"], items["title"].fillna("")))
    return [str(by_index.get(int(i), "")) for i in item_indices]


def validate_dataset(folder: str, *, hashes: bool = True) -> None:
    """Manifest, index files, shard sizes and (with ``hashes``) shard contents must all agree."""
    check_shards(folder, load_manifest(folder), hashes=hashes)
