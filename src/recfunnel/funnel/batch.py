"""Batch recommendations: the funnel for every known user (or a list), into one Parquet file.

    recfunnel recommend --run RUN_DIR [--ranker RANKER_RUN_DIR] --k 100 --out recs.parquet [--users FILE]
    -> user_id, rank (1 = best), item_id, score

Users go through the funnel in chunks (:meth:`Funnel.recommend_many`: one user-tower call, one
index search and one ranker call per chunk; filtering and re-ranking per user), exactly as online
requests batched together. Unknown users in ``--users`` get what a request for them gets (most
popular items). With ``--spark`` the users are spread over
Spark tasks, each loading the funnel once (:mod:`recfunnel.funnel.batch_spark`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from recfunnel.errors import DataError, RecfunnelError
from recfunnel.funnel.pipeline import Funnel, FunnelConfig, Request, positions

__all__ = ["recommend_users", "recommend_to_file", "read_users", "as_catalogue_ids", "check_output", "summary"]

CHUNK = 256


def read_users(path: str | Path) -> list[Any]:
    """User ids from a CSV/Parquet file with a ``user_id`` column, or a text file of one id per line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    elif path.suffix == ".csv":
        frame = pd.read_csv(path)
    else:
        frame = pd.DataFrame({"user_id": [line.strip() for line in path.read_text().splitlines() if line.strip()]})
    if "user_id" not in frame.columns:
        raise DataError(f"{path}: no column 'user_id' (columns: {list(frame.columns)})")
    return frame["user_id"].tolist()


def as_catalogue_ids(funnel: Funnel, users: list[Any]) -> list[Any]:
    """Ids read from a text file are strings: match them to the catalogue's id type when it is numeric."""
    if users and isinstance(users[0], str) and np.issubdtype(funnel.users.raw_ids.dtype, np.number):
        out = []
        for u in users:
            try:
                out.append(type(funnel.users.raw_ids[0].item())(u))
            except ValueError:
                out.append(u)
        return out
    return users


def recommend_users(funnel: Funnel, users: list[Any] | None, k: int, show: bool = False) -> Iterator[pd.DataFrame]:
    """Frames of (user_id, rank, item_id, score), a chunk of users at a time, on one thread: the
    per-user stages are too small for a thread pool, whose wake-ups cost more than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # faiss shares torch's OpenMP runtime
    try:
        yield from _recommend_users(funnel, users, k, show)
    finally:
        torch.set_num_threads(threads)


def _recommend_users(funnel: Funnel, users: list[Any] | None, k: int, show: bool) -> Iterator[pd.DataFrame]:
    rows = (
        np.arange(len(funnel.users)) if users is None else positions(funnel.user_rows, as_catalogue_ids(funnel, users))
    )
    raw = funnel.users.raw_ids if users is None else np.asarray(as_catalogue_ids(funnel, users), dtype=object)
    bar = tqdm(total=len(rows), desc="recommend", unit="user", disable=not show, leave=False, dynamic_ncols=True)
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start : start + CHUNK]
        answers = funnel.recommend_many([Request(raw[start + i], k) for i in range(len(chunk))])
        results = {i: answer.items for i, answer in enumerate(answers)}
        user_col, rank_col, item_col, score_col = [], [], [], []
        for i in range(len(chunk)):
            items = results[i]
            user_col += [raw[start + i]] * len(items)
            rank_col += list(range(1, len(items) + 1))
            item_col += [item for item, _ in items]
            score_col += [score for _, score in items]
        bar.update(len(chunk))
        if len({type(u) for u in user_col}) > 1:  # listed ids the catalogue lacks, of another type: all as text
            user_col = [str(u) for u in user_col]
        yield pd.DataFrame(
            {
                "user_id": user_col,
                "rank": np.asarray(rank_col, np.int32),
                "item_id": item_col,
                "score": np.asarray(score_col, np.float32),
            }
        )
    bar.close()


def check_output(out: str | Path, k: int, overwrite: bool) -> Path:
    """Fail before any work on a bad ``--k`` or an ``out`` that exists without ``overwrite``."""
    if k < 1:
        raise RecfunnelError(f"--k: expected an integer >= 1, got {k}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise RecfunnelError(f"{out}: already exists; pass --overwrite to replace it")
    return out


def summary(out: str | Path, users: int, rows: int, k: int, seconds: float) -> str:
    """The one line `recommend` prints when done."""
    return (
        f"{out}: {rows:,} recommendations for {users:,} users (k={k}) in {seconds:.1f} s "
        f"({users / max(seconds, 1e-9):,.0f} users/s)"
    )


def recommend_to_file(
    run: str | Path,
    out: str | Path,
    *,
    k: int = 100,
    index: str | Path | None = None,
    ranker: str | Path | None = None,
    users: str | Path | None = None,
    config: FunnelConfig | None = None,
    overwrite: bool = False,
    quiet: bool = False,
) -> str:
    """Write recommendations to the Parquet file ``out`` (atomically); returns a one-line summary."""
    out = check_output(out, k, overwrite)
    wanted = read_users(users) if users is not None else None
    start = time.perf_counter()
    funnel = Funnel.load(run, index=index, ranker=ranker, config=config)
    tmp = out.with_name(f".{out.name}.tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    writer, count, rows = None, 0, 0
    try:
        for frame in recommend_users(funnel, wanted, k, show=not quiet):
            table = pa.Table.from_pandas(frame, preserve_index=False)
            writer = writer or pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
            count += frame["user_id"].nunique()
            rows += len(frame)
    except BaseException:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
        raise
    if writer is None:
        raise RecfunnelError("no users to recommend for")
    writer.close()
    tmp.replace(out)
    return summary(out, count, rows, k, time.perf_counter() - start)
