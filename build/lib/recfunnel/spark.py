"""The Spark session of the commands that use Spark (`prepare spark`, `train --launcher spark`,
`recommend --spark`)."""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = ["spark_session"]


def spark_session(master: str = "local[2]", app: str = "recfunnel") -> Any:
    """A SparkSession whose Python workers run this interpreter (so they can import recfunnel)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession  # pyspark is heavy: only the commands that use Spark import it

    return (
        SparkSession.builder.master(master)
        .appName(app)
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "8")
        .getOrCreate()
    )
