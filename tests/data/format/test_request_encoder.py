"""RequestEncoder: raw request values -> the same indices and floats as the prepared shards."""

import numpy as np
import pandas as pd
import pytest
import torch

from recfunnel.data.format.manifest import DenseFeature, Label, Manifest, SparseFeature, load_manifest
from recfunnel.data.format.request_encoder import RequestEncoder, dense_transform
from recfunnel.data.format.vocab import hash_encode
from recfunnel.data.sources.interactions import prepare_interactions
from recfunnel.errors import DataError
from tests.data.readback import read_split

USERS = {1: ("fr", 20.0), 2: ("de", 35.0), 3: ("us", 50.0), 40: ("fr", 28.0)}  # user -> country, age
ITEMS = {"i1": (1.5, "drama|comedy"), "i2": (2.5, "drama"), "i3": (9.0, "news|drama|news"), "i4": (4.0, "")}


def raw_rows(n: int = 80, seed: int = 0) -> pd.DataFrame:
    """Interactions whose user / item features never change, and a unique row key ``rid``."""
    rng = np.random.default_rng(seed)
    users, items = rng.choice(list(USERS), n), rng.choice(list(ITEMS), n)
    return pd.DataFrame(
        {
            "user_id": users,
            "item_id": items,
            "rating": rng.integers(1, 6, n),
            "timestamp": np.arange(n),
            "country": [USERS[u][0] for u in users],
            "age": [USERS[u][1] for u in users],
            "price": [ITEMS[i][0] for i in items],
            "genres": [ITEMS[i][1] for i in items],
            "device": rng.choice(["ios", "web", "android"], n),
            "dwell": rng.exponential(3.0, n).round(2),
            "rid": np.arange(1000, 1000 + n),
        }
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(raw rows, dataset folder) of `recfunnel prepare interactions` with every kind of feature."""
    tmp = tmp_path_factory.mktemp("encoder")
    raw = raw_rows()
    raw.to_csv(tmp / "in.csv", index=False)
    prepare_interactions(
        tmp / "in.csv",
        tmp / "data",
        user_features=["country", "age"],
        item_features=["price", "genres"],
        multi_hot=["genres"],
        categorical=["rid"],
        val_fraction=0,
        test_fraction=0.25,
        history=0,  # not a column of the raw rows (tests/data/prepare/test_history.py)
        quiet=True,
    )
    return raw, tmp / "data"


def jagged(kjt, key: str) -> list[list[int]]:
    jt = kjt[key]
    return [v.tolist() for v in jt.values().split(jt.lengths().tolist())]


def test_raw_values_encode_like_the_shards(data):
    raw, out = data
    manifest, rows = read_split(out, "train")
    encoder = RequestEncoder(manifest, out)
    # a training row's example age: its days before the training data's end (raw rows lack it)
    raw = raw.assign(example_age=(manifest.extra["example_age"]["end"] - raw["timestamp"]) / 86_400)
    dense, kjt = encoder.encode(raw)
    assert dense.dtype == torch.float32 and len(rows) > 40
    assert dense.shape == (len(raw), len(manifest.dense)) and kjt.keys() == manifest.sparse_keys
    # rid is a context feature with one value per row: its train index finds the raw row of a shard row.
    rid = manifest.sparse_keys.index("rid")
    where = {int(i): r for r, i in enumerate(kjt["rid"].values().tolist()) if i != 0}
    order = np.array([where[int(i)] for i in rows.sparse[:, rid]])
    np.testing.assert_allclose(dense.numpy()[order], rows.dense, rtol=1e-5, atol=1e-5)
    for j, key in enumerate(f.name for f in manifest.single_hot):
        assert kjt[key].values().numpy()[order].tolist() == rows.sparse[:, j].tolist(), key
    for j, feature in enumerate(manifest.multi_hot):
        lengths = rows.mh_lengths[:, j].tolist()
        expected = [v.tolist() for v in np.split(rows.mh_values[j], np.cumsum(lengths)[:-1])]
        got = jagged(kjt, feature.name)
        assert [got[r] for r in order] == expected, feature.name


def test_unknown_and_missing_values_are_oov(data):
    raw, out = data
    encoder = RequestEncoder(load_manifest(out), out)
    request = raw.head(3).copy().astype(object)
    request.loc[0, ["user_id", "country", "genres", "age"]] = [999, "mars", "drama|opera", None]
    request.loc[1, ["user_id", "item_id", "genres", "price"]] = [None, "i404", None, np.nan]
    request.at[2, "user_id"] = "2"  # text id of an integer vocabulary
    request.at[2, "genres"] = ["comedy", "drama"]
    dense, kjt = encoder.encode(request)
    assert kjt["user_id"].values().tolist()[:2] == [0, 0] and kjt["user_id"].values()[2] > 0
    assert kjt["country"].values()[0] == 0 and kjt["item_id"].values()[1] == 0
    genres = jagged(kjt, "genres")
    assert genres[0][1] == 0 and genres[0][0] > 0 and genres[1] == [] and len(genres[2]) == 2
    assert genres[2] == encoder.indices("genres", ["comedy", "drama"]).tolist()
    # no example age in a request: now, the end of the data the model knows
    age = [f.name for f in encoder.manifest.dense].index("example_age")
    assert dense[:, age].tolist() == pytest.approx([encoder.manifest.extra["example_age"]["now"]] * 3)
    names = [f.name for f in load_manifest(out).dense]
    assert dense[0, names.index("age")] == 0 and dense[1, names.index("price")] == 0  # missing -> the mean


def test_missing_column_is_named(data):
    raw, out = data
    encoder = RequestEncoder(load_manifest(out), out)
    with pytest.raises(DataError, match="'country'"):
        encoder.encode(raw.drop(columns=["country"]))
    dense, kjt = encoder.encode(raw[["user_id", "item_id"]], ["item_id", "user_id"], [])  # only what is asked
    assert kjt.keys() == ["item_id", "user_id"] and dense.shape == (len(raw), 0)


def test_hash_and_index_encodings_and_transforms():
    manifest = Manifest(
        kind="ctr",
        dense=[DenseFeature("n", "log1p"), DenseFeature("s", "none")],
        sparse=[
            SparseFeature("h", 100, encoding="hash"),
            SparseFeature("i", 10, encoding="index"),
            SparseFeature("m", 10, multi_hot=True, encoding="index", max_len=3),
        ],
        labels=[Label("label")],
        splits={},
        split={},
        block_rows=8,
    )
    encoder = RequestEncoder(manifest, "/nonexistent")  # no vocabulary needed
    df = pd.DataFrame(
        {
            "h": ["a", "b", None],
            "i": [3, 12, None],
            "m": ["1|2|2", [9, 10], np.nan],
            "n": [np.e - 1, -5, None],
            "s": [1.5, None, 2],
        }
    )
    dense, kjt = encoder.encode(df)
    expected = hash_encode(pd.Series(["a", "b"]), 100).tolist() + [0]
    assert kjt["h"].values().tolist() == expected and kjt["i"].values().tolist() == [3, 0, 0]
    assert jagged(kjt, "m") == [[1, 2, 2], [9, 0], []]  # index bags keep repeats; out of range -> 0
    np.testing.assert_allclose(dense.numpy(), [[1, 1.5], [0, 0], [0, 2]], rtol=1e-6)
    f = dense_transform("x", "standardize(mean=2, std=4)")
    np.testing.assert_allclose(f(np.array([6.0, np.nan])), [1.0, 0.0])
    with pytest.raises(DataError, match="'x'.*'zscore'"):
        dense_transform("x", "zscore")
