"""Loader throughput beside two baselines over the same rows, measured in one run.

- ``loader``: :class:`StreamingBatchLoader` (blocks of rows per MDS sample, shuffled), batches of
  dense tensors + KeyedJaggedTensor + labels, as training consumes them, each block's checksum and
  ids checked.
- ``loader_unchecked``: the same without the checks (``validate=False``): what integrity costs.
  Each pass opens a fresh loader, so every block is checked (a loader checks a block the first
  time it reads it); ``integrity`` also times one loader over ``EPOCHS`` epochs each way, for the
  cost in a training run's first epoch and in the epochs after it.
- ``parquet``: a plain pyarrow Parquet reader over the same rows (no shuffling), record batches
  turned into the same tensors.
- ``per_row_mds``: one MDS sample per row read by a plain StreamingDataset with shuffling, the
  usual way to use Mosaic streaming (measured on a subset: it is slow).

Each reader is measured ``repeats`` times in turn (the machine is shared and noisy); the median
is reported.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from recfunnel.compat.streaming import import_streaming, release_shared_memory
from recfunnel.data.format.manifest import Manifest, load_manifest
from recfunnel.data.format.rows import Rows
from recfunnel.data.format.shards import decode_block
from recfunnel.data.stream.loader import StreamingBatchLoader
from recfunnel.report import table

__all__ = ["bench_data", "print_bench"]

PER_ROW_LIMIT = 20_000
EPOCHS = 3


def bench_data(
    folder: str,
    *,
    batch_size: int = 8192,
    workers: int = 0,
    seconds: float = 3.0,
    repeats: int = 3,
    max_rows: int = 2_000_000,
) -> dict[str, Any]:
    manifest = load_manifest(folder)
    rows = _read_split(folder, manifest, "train", max_rows)
    with tempfile.TemporaryDirectory(prefix="recfunnel-bench-") as tmp:
        parquet = Path(tmp) / "rows.parquet"
        pq.write_table(_to_arrow(rows, manifest), parquet, row_group_size=64 * 1024)
        per_row = Path(tmp) / "per-row"
        _write_per_row(per_row, rows.slice(0, min(len(rows), PER_ROW_LIMIT)))
        readers: dict[str, Callable[[], Iterator[int]]] = {
            "loader": lambda: _loader_batches(folder, batch_size, workers),
            "loader_unchecked": lambda: _loader_batches(folder, batch_size, workers, validate=False),
            "parquet": lambda: _parquet_batches(parquet, batch_size, manifest),
            "per_row_mds": lambda: _per_row_samples(per_row, batch_size),
        }
        runs: dict[str, list[float]] = {name: [] for name in readers}
        for _ in range(repeats):
            for name, make in readers.items():
                # Per-row MDS is timed over whole passes of its subset: a StreamingDataset left
                # mid-epoch keeps its download threads busy and would slow the next reader.
                runs[name].append(_rate(make, seconds, whole_passes=name == "per_row_mds"))
        epochs = _integrity(folder, batch_size, workers, repeats)
    rates = {name: statistics.median(r) for name, r in runs.items()}
    first = {v: statistics.median(r[0] for r in epochs[v]) for v in epochs}
    later = {v: statistics.median(x for r in epochs[v] for x in r[1:]) for v in epochs}
    return {
        "loader_rows_per_s": round(rates["loader"]),
        "loader_unchecked_rows_per_s": round(rates["loader_unchecked"]),
        "integrity_cost": round(1 - rates["loader"] / rates["loader_unchecked"], 4),
        "integrity_cost_first_epoch": round(1 - first["checked"] / first["unchecked"], 4),
        "integrity_cost_later_epochs": round(1 - later["checked"] / later["unchecked"], 4),
        "parquet_rows_per_s": round(rates["parquet"]),
        "per_row_mds_rows_per_s": round(rates["per_row_mds"]),
        "loader_vs_parquet": round(rates["loader"] / rates["parquet"], 3),
        "loader_vs_per_row_mds": round(rates["loader"] / rates["per_row_mds"], 1),
        "rows": manifest.splits["train"].rows,
        "batch_size": batch_size,
        "workers": workers,
        "repeats": repeats,
        "runs": {name: [round(x) for x in r] for name, r in runs.items()},
        "epochs": {v: [[round(x) for x in r] for r in epochs[v]] for v in epochs},
    }


def print_bench(result: dict[str, Any]) -> None:
    loader = result["loader_rows_per_s"]
    rows = [
        ["recfunnel loader (MDS, row blocks, shuffled, checked)", loader, "1.00x"],
        [
            "the same without checksum and id checks",
            result["loader_unchecked_rows_per_s"],
            f"{result['loader_unchecked_rows_per_s'] / loader:.3f}x",
        ],
        [
            "pyarrow Parquet reader (same rows, not shuffled)",
            result["parquet_rows_per_s"],
            f"{result['parquet_rows_per_s'] / loader:.2f}x",
        ],
        [
            "StreamingDataset, one MDS sample per row (shuffled)",
            result["per_row_mds_rows_per_s"],
            f"{result['per_row_mds_rows_per_s'] / loader:.3f}x",
        ],
    ]
    print(
        table(
            rows,
            ["reader", "rows/s (median)", "vs loader"],
            title=f"data loading, {result['rows']:,} rows, batch {result['batch_size']:,}, "
            f"{result['workers']} workers, median of {result['repeats']}",
        )
    )
    print(
        f"loader / parquet = {result['loader_vs_parquet']:.2f}x, loader / per-row MDS = "
        f"{result['loader_vs_per_row_mds']:.0f}x"
    )
    print(
        f"integrity checks (each block's checksum and ids, once per run): {result['integrity_cost']:.1%} of a fresh "
        f"loader's speed; over {EPOCHS} epochs of one loader, {result['integrity_cost_first_epoch']:.1%} in the first, "
        f"{result['integrity_cost_later_epochs']:.1%} in the later ones"
    )


def _rate(make: Callable[[], Iterator[int]], seconds: float, whole_passes: bool = False) -> float:
    """Rows per second of ``make()`` iterated for about ``seconds``, passes repeated as needed."""
    rows, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for n in make():
            rows += n
            if not whole_passes and time.perf_counter() - start >= seconds:
                break
    return rows / (time.perf_counter() - start)


def _integrity(folder: str, batch_size: int, workers: int, repeats: int) -> dict[str, list[list[float]]]:
    """Rows/s of each of ``EPOCHS`` epochs of one loader, checked and unchecked, ``repeats`` times in turn."""
    out: dict[str, list[list[float]]] = {"checked": [], "unchecked": []}
    for _ in range(repeats):
        for name in out:
            rates = []
            with StreamingBatchLoader(
                folder, "train", batch_size=batch_size, num_workers=workers, validate=name == "checked"
            ) as loader:
                for _ in range(EPOCHS):
                    start, rows = time.perf_counter(), 0
                    for batch in loader:
                        rows += len(batch)
                    rates.append(rows / (time.perf_counter() - start))
            out[name].append(rates)
    return out


def _loader_batches(folder: str, batch_size: int, workers: int, validate: bool = True) -> Iterator[int]:
    with StreamingBatchLoader(folder, "train", batch_size=batch_size, num_workers=workers, validate=validate) as loader:
        for batch in loader:
            yield len(batch)


def _parquet_batches(path: Path, batch_size: int, manifest: Manifest) -> Iterator[int]:
    """Record batches turned into the tensors the loader delivers (dense matrix, KJT values and
    lengths, labels), so both readers do the same work."""
    dense_names = [f.name for f in manifest.dense]
    single = [f.name for f in manifest.single_hot]
    multi = [f.name for f in manifest.multi_hot]
    label_names = [lab.name for lab in manifest.labels]
    for rb in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
        col = {name: rb.column(i) for i, name in enumerate(rb.schema.names)}
        n = rb.num_rows
        dense = np.stack([col[c].to_numpy() for c in dense_names], axis=1) if dense_names else np.zeros((n, 0))
        lists = [col[c] for c in multi]
        values = np.concatenate([col[c].to_numpy() for c in single] + [lst.values.to_numpy() for lst in lists])
        lengths = np.concatenate(
            [np.ones(n * len(single), np.int32)] + [np.diff(lst.offsets.to_numpy()) for lst in lists]
        )
        labels = np.stack([col[c].to_numpy() for c in label_names], axis=1)
        torch.from_numpy(dense), torch.from_numpy(values), torch.from_numpy(lengths), torch.from_numpy(labels)
        yield n


def _per_row_samples(folder: Path, batch_size: int) -> Iterator[int]:
    streaming = import_streaming()
    dataset = streaming.StreamingDataset(local=str(folder), shuffle=True, batch_size=batch_size)
    n = 0
    try:
        for sample in dataset:
            np.frombuffer(sample["dense"], np.float32)
            np.frombuffer(sample["sparse"], np.int64)
            n += 1
            if n == 1024:
                yield n
                n = 0
        if n:
            yield n
    finally:
        release_shared_memory(dataset)


def _read_split(folder: str, manifest: Manifest, split: str, max_rows: int) -> Rows:
    streaming = import_streaming()
    local = streaming.StreamingDataset(local=str(Path(folder) / split), shuffle=False, batch_size=1)
    parts, total = [], 0
    for i in range(local.num_samples):
        parts.append(decode_block(local[i], manifest))
        total += len(parts[-1])
        if total >= max_rows:
            break
    release_shared_memory(local)
    return Rows.concat(parts)


def _to_arrow(rows: Rows, manifest: Manifest) -> pa.Table:
    cols: dict[str, pa.Array] = {}
    for j, f in enumerate(manifest.dense):
        cols[f.name] = pa.array(rows.dense[:, j])
    for j, f in enumerate(manifest.single_hot):
        cols[f.name] = pa.array(rows.sparse[:, j])
    for j, f in enumerate(manifest.multi_hot):
        offsets = np.concatenate([[0], np.cumsum(rows.mh_lengths[:, j])]).astype(np.int32)
        cols[f.name] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(rows.mh_values[j]))
    for j, lab in enumerate(manifest.labels):
        cols[lab.name] = pa.array(rows.labels[:, j])
    return pa.table(cols)


def _write_per_row(folder: Path, rows: Rows) -> None:
    streaming = import_streaming()
    columns = {"dense": "bytes", "sparse": "bytes", "mh_lengths": "bytes", "mh_values": "bytes", "labels": "bytes"}
    offsets = [np.concatenate([[0], np.cumsum(rows.mh_lengths[:, j])]) for j in range(rows.mh_lengths.shape[1])]
    with streaming.MDSWriter(out=str(folder), columns=columns, progress_bar=False) as writer:
        for i in range(len(rows)):
            writer.write(
                {
                    "dense": rows.dense[i].tobytes(),
                    "sparse": rows.sparse[i].tobytes(),
                    "mh_lengths": rows.mh_lengths[i].tobytes(),
                    "mh_values": b"".join(v[o[i] : o[i + 1]].tobytes() for v, o in zip(rows.mh_values, offsets)),
                    "labels": rows.labels[i].tobytes(),
                }
            )
