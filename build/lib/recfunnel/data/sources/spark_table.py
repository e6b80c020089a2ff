"""Interactions too big for one machine: Spark reads them and its workers write the shards.

The input is a Parquet/CSV/Delta path or a table name (``--format table``) with columns
``user_id``, ``item_id``, and ``rating`` or ``label``, optional ``timestamp``. With the default
``--master local[2]`` Spark runs in this process; on a cluster pass its master URL, or call
``recfunnel.data.prepare.spark.prepare_spark_interactions(df, out)`` from a notebook with its session.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from recfunnel.data.format.manifest import Manifest
from recfunnel.data.prepare.spark import prepare_spark_interactions
from recfunnel.errors import DataError
from recfunnel.spark import spark_session

HELP = "interactions from a Spark table or Parquet/CSV/Delta path, written by Spark workers"
FORMATS = ("parquet", "csv", "delta", "table")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="a path (Parquet, CSV with header, Delta) or a table name")
    parser.add_argument("--format", choices=FORMATS, default=None, help="default: from the path's suffix, else parquet")
    parser.add_argument("--master", default="local[2]", help="Spark master URL (default local[2])")
    parser.add_argument(
        "--label",
        choices=["threshold", "all"],
        default="threshold",
        help="threshold: rating >= --threshold is a positive; all: every row is (default threshold)",
    )
    parser.add_argument("--threshold", type=float, default=4.0)
    parser.add_argument("--split", choices=["random", "temporal"], default="random")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--leave-last", type=int, default=1, help="temporal split: rows per user held out (default 1)")
    parser.add_argument("--partitions", type=int, default=None, help="Spark partitions (= shard writers) per split")


def prepare_spark(input: str, out: str, *, format: str | None = None, master: str = "local[2]", **options) -> Manifest:
    """Read ``input`` with Spark and write the dataset; options as in ``prepare_spark_interactions``."""
    fmt = format or {".csv": "csv", ".parquet": "parquet"}.get(Path(input).suffix, "parquet")
    if fmt != "table" and not Path(input).exists() and "://" not in input:
        raise DataError(f"{input}: no such file or folder")
    spark = spark_session(master)
    if fmt == "table":
        df = spark.read.table(input)
    elif fmt == "csv":
        df = spark.read.option("header", True).option("inferSchema", True).csv(input)
    else:
        df = spark.read.format(fmt).load(input)
    return prepare_spark_interactions(
        df, out, source={"kind": "spark", "input": Path(input).name, "format": fmt}, **options
    )


def run(args: argparse.Namespace) -> Manifest:
    return prepare_spark(
        args.input,
        args.out,
        format=args.format,
        master=args.master,
        label=args.label,
        threshold=args.threshold,
        split=args.split,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        leave_last=args.leave_last,
        seed=args.seed,
        block_rows=args.block_rows,
        partitions=args.partitions,
        overwrite=args.overwrite,
        compression=args.compression,
    )
