"""`recfunnel recommend --spark`: the users spread over Spark tasks, each loading the funnel once.

The run, ranker and index folders must be paths every executor reads (local disk with a local
master; a Unity Catalog volume or DBFS path on a cluster). The output is a folder of Parquet
parts (Spark's convention), written to a temporary sibling and renamed when complete.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from recfunnel.data.format.catalog import Catalog
from recfunnel.funnel.batch import check_output, read_users, recommend_users, summary
from recfunnel.funnel.pipeline import Funnel, FunnelConfig
from recfunnel.spark import spark_session
from recfunnel.store.model import Trained, load_trained

__all__ = ["recommend_to_folder_with_spark", "recommend_with_spark"]


def recommend_to_folder_with_spark(
    run: str | Path,
    out: str | Path,
    *,
    k: int = 100,
    index: str | Path | None = None,
    ranker: str | Path | None = None,
    users: str | Path | None = None,
    config: FunnelConfig | None = None,
    overwrite: bool = False,
    master: str = "",
) -> str:
    """`recommend --spark`: like ``batch.recommend_to_file``, into the Parquet folder ``out``;
    returns a one-line summary."""
    out = check_output(out, k, overwrite)
    wanted = read_users(users) if users is not None else None
    start = time.perf_counter()
    count, rows = recommend_with_spark(
        run, out, k=k, index=index, ranker=ranker, users=wanted, config=config, master=master
    )
    return summary(out, count, rows, k, time.perf_counter() - start)


def recommend_with_spark(
    run: str | Path,
    out: str | Path,
    *,
    k: int,
    index: str | Path | None,
    ranker: str | Path | None,
    users: list[Any] | None,
    config: FunnelConfig | None,
    master: str = "",
    partitions: int | None = None,
) -> tuple[int, int]:
    """(users, rows) written to the Parquet folder ``out``."""
    from pyspark.sql import SparkSession  # pyspark is heavy: only `recommend --spark` imports it

    active = SparkSession.getActiveSession()
    spark = active if active is not None and not master else spark_session(master or "local[*]", "recfunnel-recommend")
    if spark is not active:
        spark.sparkContext.setLogLevel("ERROR")
    retriever = load_trained(run)
    catalog = Catalog.load(retriever.folder, retriever.manifest, "user")
    ids = list(catalog.raw_ids.tolist()) if users is None else [str(u) for u in users]
    numeric = users is None and pd.api.types.is_integer_dtype(catalog.raw_ids.dtype)
    id_type = "long" if numeric else "string"
    frame = spark.createDataFrame(pd.DataFrame({"user_id": ids}))
    frame = frame.repartition(partitions or max(2, spark.sparkContext.defaultParallelism))
    paths = (
        str(Path(run).resolve()),
        str(Path(index).resolve()) if index else None,
        str(Path(ranker).resolve()) if ranker else None,
    )

    def recommend_partition(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        funnel = Funnel.load(paths[0], index=paths[1], ranker=paths[2], config=config)
        for batch in batches:
            for recs in recommend_users(funnel, batch["user_id"].tolist(), k):
                recs["user_id"] = recs["user_id"].astype("int64" if numeric else str)
                yield recs

    schema = f"user_id {id_type}, rank int, item_id {_item_type(retriever)}, score float"
    result = frame.mapInPandas(recommend_partition, schema=schema)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        result.write.parquet(str(tmp))
        written = spark.read.parquet(str(tmp))
        counts = (written.select("user_id").distinct().count(), written.count())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    tmp.rename(out)
    if active is None or master:
        spark.stop()
    return counts


def _item_type(retriever: Trained) -> str:
    items = Catalog.load(retriever.folder, retriever.manifest, "item")
    return "long" if pd.api.types.is_integer_dtype(items.raw_ids.dtype) else "string"
