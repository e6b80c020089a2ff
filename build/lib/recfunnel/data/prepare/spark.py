"""Prepare interaction data bigger than one machine with Spark: the workers write the MDS shards.

    spark = spark_session("local[2]")            # or the cluster's session (Databricks: `spark`)
    df = spark.read.table("main.shop.clicks")    # user_id, item_id, rating | label, [timestamp]
    prepare_spark_interactions(df, "/Volumes/main/shop/recfunnel/clicks")

Labels, splits and id vocabularies are computed with Spark (vocabularies are collected to the
driver: one row per distinct user or item). Each partition of each split is encoded and written
by the worker that holds it, through the same block writer as the single-machine path, into
``<split>/part-NNNNN/``; the partition indexes are then merged into ``<split>/index.json``, as
Mosaic's ``dataframe_to_mds`` does, and the partitions' block sizes go into the manifest.
``out`` must be a path every worker can write (local disk in local mode, a FUSE-mounted volume
such as ``/dbfs`` or ``/Volumes`` on a cluster).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recfunnel.data.format.manifest import Label, Manifest, SparseFeature, SplitInfo
from recfunnel.data.format.rows import Rows
from recfunnel.data.format.shards import SplitWriter, run_lengths
from recfunnel.data.format.vocab import Vocab
from recfunnel.errors import DataError
from recfunnel.files import atomic_output_dir

__all__ = ["prepare_spark_interactions"]

SPLITS = ("train", "val", "test")


def prepare_spark_interactions(
    df: Any,
    out: str | Path,
    *,
    label: str = "threshold",
    threshold: float = 4.0,
    split: str = "random",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    leave_last: int = 1,
    seed: int = 42,
    block_rows: int = 4096,
    partitions: int | None = None,
    overwrite: bool = False,
    compression: str | None = None,
    source: dict | None = None,
) -> Manifest:
    """Write a Spark DataFrame of interactions as a recfunnel dataset (see schema.py).

    df: columns ``user_id``, ``item_id``, and ``rating`` or ``label`` (neither: implicit feedback,
    every row a positive), optional ``timestamp``. label: ``threshold`` (rating >= threshold),
    ``all`` (every row a positive). split: ``random`` (seeded hash of the row) or ``temporal``
    (each user's last ``leave_last`` rows by timestamp to test, the ones before to val).
    """
    from pyspark.sql import functions as F

    cols = _check_columns(df, split)
    df = _with_labels(df, cols, label, threshold)
    df = _with_split(df, cols, split, val_fraction, test_fraction, leave_last, seed).cache()
    try:
        counts = {s: c for s, c in df.groupBy("_split").count().collect()}
        if not counts:
            raise DataError("spark input: no rows")
        vocabs = {name: _vocab(df, name) for name in ("user_id", "item_id")}
        encoded = _encode(df, vocabs, cols)
        labels = [Label("label", "binary", _rule(cols, label, threshold))]
        if "rating" in cols:
            labels.append(Label("rating", "regression", "the rating"))
        with atomic_output_dir(out, overwrite) as tmp:
            splits = {}
            for name in SPLITS:
                if counts.get(name):
                    part = encoded.filter(F.col("_split") == name)
                    splits[name] = _write_split(
                        part,
                        tmp / name,
                        block_rows,
                        seed,
                        len(labels),
                        partitions or max(1, df.rdd.getNumPartitions()),
                        name == "train",
                        compression,
                    )
                    _write_pairs(part, tmp / "pairs" / f"{name}.parquet", cols)
            for vocab in vocabs.values():
                vocab.save(tmp / "vocab")
            _write_entities(vocabs["user_id"], tmp / "users.parquet", "user")
            _write_entities(vocabs["item_id"], tmp / "items.parquet", "item")
            manifest = Manifest(
                kind="interactions",
                dense=[],
                sparse=[SparseFeature(n, v.cardinality) for n, v in vocabs.items()],
                labels=labels,
                splits=splits,
                split={
                    "kind": split,
                    "seed": seed,
                    "val_fraction": val_fraction,
                    "test_fraction": test_fraction,
                    **({"leave_last": leave_last} if split == "temporal" else {}),
                },
                block_rows=block_rows,
                source=source or {"kind": "spark"},
                roles={
                    "user": "user_id",
                    "item": "item_id",
                    "user_features": [],
                    "item_features": [],
                    "timestamp": "timestamp" in cols,
                },
            )
            manifest.save(tmp)
        return manifest
    finally:
        df.unpersist()


def _check_columns(df: Any, split: str) -> set[str]:
    cols = set(df.columns)
    missing = [c for c in ("user_id", "item_id") if c not in cols]
    if missing:
        raise DataError(
            f"spark input: missing column(s) {missing}; expected user_id, item_id, and rating or "
            f"label, optional timestamp; found {sorted(cols)}"
        )
    if split == "temporal" and "timestamp" not in cols:
        raise DataError("spark input: --split temporal needs a 'timestamp' column")
    from pyspark.sql import functions as F

    checks = [("user_id", F.col("user_id").isNull(), "a user_id"), ("item_id", F.col("item_id").isNull(), "an item_id")]
    if "rating" in cols:
        checks.append(
            ("rating", F.col("rating").isNull() | F.isnan(F.col("rating").cast("double")), "a numeric rating")
        )
    if "label" in cols:
        checks.append(
            ("label", ~F.col("label").cast("double").isin(0.0, 1.0) | F.col("label").isNull(), "label 0 or 1")
        )
    for name, bad, expected in checks:
        row = df.filter(bad).select(*[c for c in ("user_id", "item_id", name) if c in cols]).first()
        if row is not None:
            raise DataError(f"spark input: column {name!r} has a bad value in row {row.asDict()}; expected {expected}")
    return cols


def _with_labels(df: Any, cols: set[str], label: str, threshold: float) -> Any:
    from pyspark.sql import functions as F

    if "label" in cols:
        return df.withColumn("_label", F.col("label").cast("float"))
    if "rating" not in cols or label == "all":
        return df.withColumn("_label", F.lit(1.0).cast("float"))
    if label != "threshold":
        raise DataError(f"spark input: --label {label!r}; expected threshold or all")
    return df.withColumn("_label", (F.col("rating") >= threshold).cast("float"))


def _rule(cols: set[str], label: str, threshold: float) -> str:
    if "label" in cols:
        return "the label column"
    if "rating" not in cols:
        return "implicit: every row is a positive"
    return "every rating is a positive" if label == "all" else f"rating >= {threshold:g}"


def _with_split(df: Any, cols: set[str], split: str, val: float, test: float, leave_last: int, seed: int) -> Any:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if split == "random":
        key = [F.col(c).cast("string") for c in ("user_id", "item_id", "timestamp") if c in cols]
        u = F.pmod(F.xxhash64(F.lit(seed), *key), F.lit(1 << 31).cast("long")) / F.lit(float(1 << 31))
        return df.withColumn("_split", F.when(u < test, "test").when(u < test + val, "val").otherwise("train"))
    if split == "temporal":
        order = Window.partitionBy("user_id").orderBy(F.col("timestamp").desc(), F.col("item_id").desc())
        df = df.withColumn("_pos", F.row_number().over(order)).withColumn(
            "_n", F.count("*").over(Window.partitionBy("user_id"))
        )
        holdout = 2 * leave_last if val > 0 else leave_last
        eligible = F.col("_n") > holdout
        return df.withColumn(
            "_split",
            F.when(eligible & (F.col("_pos") <= leave_last), "test")
            .when(eligible & (val > 0) & (F.col("_pos") <= 2 * leave_last), "val")
            .otherwise("train"),
        ).drop("_pos", "_n")
    raise DataError(f"spark input: --split {split!r}; expected random or temporal")


def _vocab(df: Any, name: str) -> Vocab:
    """Indices by decreasing train frequency; ids seen only in val/test get the last indices."""
    from pyspark.sql import functions as F

    rows = df.groupBy(name).agg(F.sum((F.col("_split") == "train").cast("long")).alias("n")).toPandas()
    counted = rows[rows["n"] > 0]
    return Vocab.from_counts(name, pd.Series(counted["n"].to_numpy(), index=counted[name].to_numpy()), also=rows[name])


def _encode(df: Any, vocabs: dict[str, Vocab], cols: set[str]) -> Any:
    from pyspark.sql import functions as F

    spark = df.sparkSession
    for name, vocab in vocabs.items():
        table = spark.createDataFrame(
            pd.DataFrame({name: vocab.values, f"{name}_index": np.arange(1, vocab.cardinality)})
        )
        df = df.join(F.broadcast(table), on=name, how="left")
    keep = ["user_id_index", "item_id_index", "_label", "_split"] + (["rating"] if "rating" in cols else [])
    keep += ["timestamp"] if "timestamp" in cols else []
    return df.select(*keep).fillna(0, subset=["user_id_index", "item_id_index"])


def _write_split(
    df: Any,
    folder: Path,
    block_rows: int,
    seed: int,
    n_labels: int,
    partitions: int,
    shuffle: bool,
    compression: str | None,
) -> SplitInfo:
    """Each partition writes ``folder/part-NNNNN`` with its own block writer; then merge indexes."""
    from pyspark.sql import functions as F

    folder.mkdir(parents=True)
    df = df.repartition(partitions, F.xxhash64(F.lit(seed), "user_id_index", "item_id_index"))
    df = df.sortWithinPartitions("user_id_index", "item_id_index")  # same rows -> same bytes
    has_rating = "rating" in df.columns
    writer = _partition_writer(str(folder), block_rows, seed if shuffle else None, has_rating, n_labels, compression)
    parts = df.mapInPandas(writer, "part long, rows long, blocks string, positives double").collect()
    parts = sorted(p for p in parts if p.rows)
    _merge_indexes(folder, [f"part-{p.part:05d}" for p in parts])
    blocks = [size for p in parts for count, size in json.loads(p.blocks) for _ in range(count)]
    rows = sum(p.rows for p in parts)
    positives = round(sum(p.positives * p.rows for p in parts) / rows, 6) if rows else None
    return SplitInfo(rows=rows, blocks=run_lengths(blocks), positives=positives)


def _merge_indexes(folder: Path, parts: list[str]) -> None:
    """One MDS index over the partitions' shards, in ``parts`` order (what streaming's
    ``merge_index`` does, without its temp copies): shard paths become ``part-NNNNN/shard...``."""
    shards = []
    for part in parts:
        for shard in json.loads((folder / part / "index.json").read_text())["shards"]:
            for kind in ("raw_data", "zip_data"):
                if shard.get(kind):
                    shard[kind]["basename"] = f"{part}/{shard[kind]['basename']}"
            shards.append(shard)
    (folder / "index.json").write_text(json.dumps({"version": 2, "shards": shards}, sort_keys=True))


def _partition_writer(
    folder: str, block_rows: int, seed: int | None, has_rating: bool, n_labels: int, compression: str | None
):
    """The function Spark runs on each partition (pickled to the workers: no Spark objects inside)."""

    def write(chunks: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from pyspark import TaskContext

        context = TaskContext.get()
        assert context is not None  # this runs inside a Spark task
        part = context.partitionId()
        writer = None
        for chunk in chunks:
            if writer is None:
                shuffle_seed = None if seed is None else seed * 100_003 + part
                writer = SplitWriter(
                    Path(folder) / f"part-{part:05d}", block_rows, shuffle_seed=shuffle_seed, compression=compression
                )
            writer.write(_rows(chunk, has_rating, n_labels))
        if writer is None:
            yield pd.DataFrame({"part": [part], "rows": [0], "blocks": ["[]"], "positives": [0.0]})
            return
        info = writer.finish()
        yield pd.DataFrame(
            {
                "part": [part],
                "rows": [info.rows],
                "blocks": [json.dumps(info.blocks)],
                "positives": [info.positives or 0.0],
            }
        )

    return write


def _rows(chunk: pd.DataFrame, has_rating: bool, n_labels: int) -> Rows:
    n = len(chunk)
    labels = [chunk["_label"].to_numpy(np.float32)]
    if has_rating:
        labels.append(chunk["rating"].to_numpy(np.float32))
    return Rows(
        dense=np.zeros((n, 0), np.float32),
        sparse=np.stack([chunk["user_id_index"].to_numpy(np.int64), chunk["item_id_index"].to_numpy(np.int64)], axis=1),
        mh_lengths=np.zeros((n, 0), np.int32),
        mh_values=[],
        labels=np.stack(labels[:n_labels], axis=1),
    )


def _write_pairs(df: Any, path: Path, cols: set[str]) -> None:
    from pyspark.sql import functions as F

    select = [
        F.col("user_id_index").alias("user_index"),
        F.col("item_id_index").alias("item_index"),
        F.col("_label").alias("label"),
    ]
    select += [F.col("rating").cast("float")] if "rating" in cols else []
    select += [F.col("timestamp")] if "timestamp" in cols else []
    df.select(*select).write.parquet(str(path))


def _write_entities(vocab: Vocab, path: Path, who: str) -> None:
    pd.DataFrame(
        {f"{who}_index": np.arange(1, vocab.cardinality, dtype=np.int64), f"{who}_id": vocab.values}
    ).to_parquet(path, index=False)
