"""Synthetic interactions with planted tastes: the data carries the signal the generator put in."""

import numpy as np
import pandas as pd
import pytest

from recfunnel.data.format.manifest import load_manifest
from recfunnel.data.sources.synthetic_interactions import (
    make_tastes,
    prepare_synthetic_interactions,
    sample_interactions,
)
from recfunnel.errors import ConfigError
from tests.data.readback import read_split


def test_sampled_interactions_follow_the_planted_tastes():
    rng = np.random.default_rng(0)
    tastes = make_tastes(200, 150, 8, rng)
    frame = sample_interactions(tastes, 6000, rng)
    assert len(frame) == 6000 and not frame.duplicated(["user_id", "item_id"]).any()
    assert frame["timestamp"].is_monotonic_increasing and frame["rating"].between(1, 5).all()
    # Chosen items score higher under the true model than random items do, and high ratings follow taste.
    chosen = tastes.sharpness * np.einsum("nd,nd->n", tastes.U[frame.user_id], tastes.V[frame.item_id])
    random_items = rng.integers(0, 150, 6000)
    baseline = tastes.sharpness * np.einsum("nd,nd->n", tastes.U[frame.user_id], tastes.V[random_items])
    assert chosen.mean() > baseline.mean() + 1.0
    assert chosen[frame.rating >= 4].mean() > chosen[frame.rating <= 2].mean()
    assert 0.4 < (frame.rating >= 4).mean() < 0.7


def test_prepare_synthetic_interactions(tmp_path):
    out = tmp_path / "syn"
    m = prepare_synthetic_interactions(8000, out, users=200, items=120, seed=3, quiet=True)
    assert m.kind == "interactions" and m.source["kind"] == "synthetic" and m.split["kind"] == "temporal"
    assert sum(info.rows for info in m.splits.values()) == 8000
    assert m.extra["users"] == 200 and m.extra["items"] == 120  # every generated user and item is in the catalog
    assert m.roles["user_features"] == ["segment", "history", "example_age"]
    assert m.roles["item_features"] == ["category", "tags", "popularity"]
    assert m.extra["generator"]["seed"] == 3
    # The planted model retrieves held-out positives far better than popularity does.
    assert m.extra["truth_recall_at_10"] > 2 * m.extra["popularity_recall_at_10"]
    assert m.extra["truth_recall_at_10"] > 0.3 and m.extra["recall_users"] > 100
    assert load_manifest(out).extra == m.extra
    _, rows = read_split(out, "test")
    assert len(rows) == m.splits["test"].rows == 200  # leave-last-one-out: one row per user
    # Same seed, same data; another seed, other data.
    again = prepare_synthetic_interactions(8000, tmp_path / "again", users=200, items=120, seed=3, quiet=True)
    other = prepare_synthetic_interactions(8000, tmp_path / "other", users=200, items=120, seed=4, quiet=True)
    train = lambda p: pd.read_parquet(p / "pairs" / "train.parquet")  # noqa: E731
    pd.testing.assert_frame_equal(train(out), train(tmp_path / "again"))
    assert not train(out).equals(train(tmp_path / "other"))
    assert again.extra == m.extra and other.extra != m.extra


def test_too_many_rows_for_the_catalog(tmp_path):
    with pytest.raises(ConfigError, match="rows <= users \\* items"):
        prepare_synthetic_interactions(101, tmp_path / "out", users=10, items=10)
    assert not (tmp_path / "out").exists()
