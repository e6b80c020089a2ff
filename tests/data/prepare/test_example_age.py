"""The `example_age` feature: each training row's days before the end of the training data; held-out
rows, the users table and requests get the age of the moment they are asked about."""

import numpy as np
import pandas as pd
import pytest

from recfunnel.data.format.catalog import Catalog
from recfunnel.data.format.manifest import load_manifest
from recfunnel.data.format.pairs import read_pairs
from recfunnel.data.format.request_encoder import RequestEncoder
from recfunnel.data.sources.interactions import prepare_interactions
from recfunnel.errors import DataError
from recfunnel.funnel.inputs import user_from_raw
from recfunnel.models.two_tower import tower_features
from tests.data.readback import read_split

DAY = 86_400


def _prepared(tmp_path, split: str):
    rng = np.random.default_rng(0)
    rows = 1200
    frame = pd.DataFrame(
        {
            "user_id": rng.integers(0, 30, rows),
            "item_id": rng.integers(0, 25, rows),
            "timestamp": rng.integers(0, 90, rows) * DAY + rng.integers(0, DAY, rows),
        }
    )
    frame["when"] = frame["timestamp"].astype(float)  # a dense copy: a row read back knows its time
    frame.to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "data"
    prepare_interactions(tmp_path / "in.csv", out, dense=["when"], split=split, quiet=True)
    return out, load_manifest(out)


def _raw(manifest, values: np.ndarray, name: str) -> np.ndarray:
    stats = manifest.extra["dense_stats"][name]
    return values.astype(np.float64) * stats["std"] + stats["mean"]


def _latest(pairs: list, users: np.ndarray) -> dict[int, float]:
    """Each user's latest timestamp in ``pairs`` (read_pairs of some splits)."""
    out: dict[int, float] = {}
    for p in pairs:
        for u, t in zip(p.users, p.timestamps):
            out[int(u)] = max(out.get(int(u), -np.inf), float(t))
    return {int(u): out[int(u)] for u in users if int(u) in out}


@pytest.mark.parametrize("split", ["temporal", "time"])
def test_rows_carry_their_days_before_the_training_end_and_held_out_rows_the_moment_they_are_asked_about(
    tmp_path, split
):
    """Training rows: their age. A split in time by user (``temporal``) asks about each user at their
    latest known row (training rows for val; + val rows for test); one cut in time asks about the
    end of the training data (val) and of the validation data (test)."""
    out, manifest = _prepared(tmp_path, split)
    names = [f.name for f in manifest.dense]
    assert names[-1] == "example_age" and manifest.roles["example_age"] == "example_age"
    assert "example_age" in manifest.roles["user_features"]
    train, val = read_pairs(out, "train"), read_pairs(out, "val")
    end, known_end = train.timestamps.max(), max(train.timestamps.max(), val.timestamps.max())
    assert manifest.extra["example_age"]["end"] == end and manifest.extra["example_age"]["known_end"] == known_end
    asked = {"val": [train], "test": [train, val]}
    moment = {"val": end, "test": known_end}
    user_col = manifest.sparse_keys.index("user_id")
    checked = 0
    for name in manifest.splits:
        _, rows = read_split(out, name, manifest)
        when = _raw(manifest, rows.dense[:, names.index("when")], "when")
        age = _raw(manifest, rows.dense[:, names.index("example_age")], "example_age")
        if name == "train":
            np.testing.assert_allclose(age, (end - when) / DAY, atol=1e-3)
            continue
        users = rows.sparse[:, user_col]
        latest = _latest(asked[name], users) if split == "temporal" else {}
        expected = [(end - latest.get(int(u), moment[name])) / DAY for u in users]
        np.testing.assert_allclose(age, expected, atol=1e-3)
        checked += len(rows)
    assert checked >= 60  # every held-out row (30 users: one each in val and test at the least)
    # the users table holds the same moments: a user at test, and at val
    table = Catalog.load(out, manifest, "user")
    at_val = Catalog.load(out, manifest, "user", as_of="val")
    latest = {"test": _latest(asked["test"], table.index), "val": _latest(asked["val"], table.index)}
    for catalog, stage in ((table, "test"), (at_val, "val")):
        got = _raw(manifest, catalog.dense["example_age"], "example_age")
        when = [latest[stage].get(int(u), moment[stage]) if split == "temporal" else moment[stage] for u in table.index]
        np.testing.assert_allclose(got, (end - np.array(when)) / DAY, atol=1e-3)


def test_serving_asks_about_now_from_the_catalogue_and_from_a_request(tmp_path):
    out, manifest = _prepared(tmp_path, "time")
    now = manifest.extra["example_age"]["now"]
    np.testing.assert_array_equal(Catalog.load(out, manifest, "user").dense["example_age"], np.float32(now))
    assert _raw(manifest, np.array([now]), "example_age")[0] == pytest.approx(
        (manifest.extra["example_age"]["end"] - manifest.extra["example_age"]["known_end"]) / DAY, abs=1e-3
    )
    encoder = RequestEncoder(manifest, out)
    for given in ({}, {"example_age": 1000.0}):  # a request cannot move the model's moment
        features, notes = user_from_raw(manifest, encoder, given)
        assert features.dense["example_age"] == pytest.approx(now)
        assert len(notes) == len(given) and all("ignored" in note for note in notes)
    # and a request without the column is asked about the same moment
    dense, _ = encoder.encode(pd.DataFrame({"user_id": [1]}), [], ["example_age"])
    assert dense[0, 0].item() == pytest.approx(now, abs=1e-6)
    assert "example_age" in tower_features(manifest, "user", None)[1]


def test_a_random_split_has_no_example_age(tmp_path):
    _, manifest = _prepared(tmp_path, "random")
    assert "example_age" not in [f.name for f in manifest.dense]
    assert manifest.roles["example_age"] is None and "example_age" not in manifest.extra


@pytest.mark.parametrize("name", ["example_age", "history"])
def test_a_column_named_like_a_derived_feature_is_a_one_line_error_and_writes_nothing(tmp_path, name):
    frame = pd.DataFrame(
        {"user_id": np.repeat(np.arange(10), 6), "item_id": np.tile(np.arange(6), 10), "timestamp": np.arange(60)}
    )
    frame[name] = 1.0
    frame.to_csv(tmp_path / "in.csv", index=False)
    with pytest.raises(DataError, match=f"in.csv: column '{name}' has the name of a feature prepare derives"):
        prepare_interactions(tmp_path / "in.csv", tmp_path / "data", quiet=True)
    assert not (tmp_path / "data").exists()
