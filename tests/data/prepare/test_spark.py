"""Spark local mode: workers write the shards; the loader reads every row once."""

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recfunnel.data.format.manifest import load_manifest
from recfunnel.data.stream.loader import StreamingBatchLoader

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def interactions(tmp_path_factory) -> Path:
    rng = np.random.default_rng(3)
    n = 3000
    frame = pd.DataFrame(
        {
            "user_id": rng.integers(0, 150, n),
            "item_id": rng.integers(0, 200, n),
            "rating": rng.integers(1, 6, n).astype(float),
            "timestamp": rng.integers(0, 10**6, n),
        }
    )
    frame = frame.drop_duplicates(["user_id", "item_id"]).reset_index(drop=True)
    frame.loc[0, ["user_id", "item_id"]] = [0, 0]  # id 0 is an ordinary id
    path = tmp_path_factory.mktemp("spark") / "clicks.parquet"
    frame.to_parquet(path, index=False)
    return path


@pytest.fixture(scope="module", autouse=True)
def stop_spark():
    yield
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession()
    if session is not None:
        session.stop()


def test_spark_workers_write_a_dataset_the_loader_reads_exactly_once(cli, interactions, tmp_path):
    out = tmp_path / "ds"
    code, _, err = cli(
        "prepare", "spark", "--input", interactions, "--out", out, "--block-rows", "64", "--partitions", "3", "--quiet"
    )
    assert code == 0, err
    frame = pd.read_parquet(interactions)
    manifest = load_manifest(out)
    assert sum(s.rows for s in manifest.splits.values()) == len(frame)
    assert len(list((out / "train").glob("part-*/shard.*.mds"))) >= 3  # written by several workers

    pairs = pd.read_parquet(out / "pairs" / "train.parquet")
    want = Counter(zip(pairs.user_index, pairs.item_index, pairs.label))
    got = Counter()
    for batch in StreamingBatchLoader(out, "train", batch_size=100):
        keep = batch.weights.numpy() > 0
        users = batch.sparse["user_id"].values().numpy()[keep]
        items = batch.sparse["item_id"].values().numpy()[keep]
        got.update(zip(users, items, batch.labels[:, 0].numpy()[keep]))
    assert got == want

    users = pd.read_parquet(out / "users.parquet")
    items = pd.read_parquet(out / "items.parquet")
    assert users.loc[users.user_id == 0, "user_index"].item() >= 1
    assert set(users.user_id) == set(frame.user_id) and set(items.item_id) == set(frame.item_id)
    # labels follow the rule rating >= 4
    test_pairs = pd.read_parquet(out / "pairs" / "test.parquet")
    assert ((test_pairs.rating >= 4) == (test_pairs.label == 1)).all()


def test_spark_temporal_split_holds_out_each_users_latest(cli, interactions, tmp_path):
    out = tmp_path / "temporal"
    code, _, err = cli(
        "prepare",
        "spark",
        "--input",
        interactions,
        "--out",
        out,
        "--split",
        "temporal",
        "--val-fraction",
        "0",
        "--quiet",
    )
    assert code == 0, err
    train = pd.read_parquet(out / "pairs" / "train.parquet")
    test = pd.read_parquet(out / "pairs" / "test.parquet")
    latest_train = train.groupby("user_index").timestamp.max()
    held = test.set_index("user_index").timestamp
    assert test.user_index.is_unique and (held >= latest_train.reindex(held.index)).all()


def test_spark_missing_column_is_one_line_and_leaves_nothing(cli, tmp_path):
    bad = tmp_path / "bad.parquet"
    pd.DataFrame({"user": [1, 2], "item_id": [3, 4], "rating": [4.0, 5.0]}).to_parquet(bad, index=False)
    out = tmp_path / "out"
    code, _, err = cli("prepare", "spark", "--input", bad, "--out", out, "--quiet")
    assert code == 2
    assert "missing column(s) ['user_id']" in err and "\n" not in err.strip()
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))
