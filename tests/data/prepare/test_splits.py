"""Seeded splits: random fractions, per-user leave-last-N-out, one global time cut."""

import numpy as np
import pytest

from recfunnel.data.prepare.splits import TEST, TRAIN, VAL, SplitSpec, assign_splits, user_time_order
from recfunnel.errors import ConfigError, DataError


def test_random_split_has_exact_seeded_fractions():
    users = np.arange(1000) % 37
    codes, record = assign_splits(SplitSpec("random", 0.1, 0.2, seed=7), users, None)
    assert np.bincount(codes, minlength=3).tolist() == [700, 100, 200]
    assert record == {
        "kind": "random",
        "seed": 7,
        "val_fraction": 0.1,
        "test_fraction": 0.2,
        "rows": {"train": 700, "val": 100, "test": 200},
    }
    again, _ = assign_splits(SplitSpec("random", 0.1, 0.2, seed=7), users, None)
    other, _ = assign_splits(SplitSpec("random", 0.1, 0.2, seed=8), users, None)
    assert (again == codes).all() and (other != codes).any()


def test_random_split_without_val():
    codes, record = assign_splits(SplitSpec("random", 0.0, 0.2), np.zeros(50, np.int64), None)
    assert VAL not in codes and (codes == TEST).sum() == 10
    assert "val" not in record["rows"]
    assert SplitSpec("random", 0.0, 0.2).names == ["train", "test"]


def test_temporal_split_leaves_each_users_latest_rows_out():
    # user 0: 4 rows, user 1: 3 rows (file order shuffled in time), user 2: 2 rows -> too few for val+test.
    users = np.array([0, 1, 0, 1, 0, 2, 1, 0, 2])
    stamps = np.array([10, 30, 40, 10, 20, 5, 20, 30, 6])
    codes, record = assign_splits(SplitSpec("temporal", seed=1), users, stamps)
    expected = {0: [TRAIN, TEST, TRAIN, VAL], 1: [TEST, TRAIN, VAL], 2: [TRAIN, TRAIN]}
    for user, want in expected.items():
        assert codes[users == user].tolist() == want
    assert record["min_rows_per_user"] == 3 and record["users_kept_in_train"] == 1
    assert record["rows"] == {"train": 5, "val": 2, "test": 2}


def test_temporal_split_leave_last_two_without_val_and_ties_in_file_order():
    users = np.zeros(5, np.int64)
    stamps = np.array([1, 9, 9, 9, 2])  # three rows share the latest second: the last two in file order go
    codes, record = assign_splits(SplitSpec("temporal", val_fraction=0, leave_last=2), users, stamps)
    assert codes.tolist() == [TRAIN, TRAIN, TEST, TEST, TRAIN]
    assert record["leave_last"] == 2 and record["val"] is False


def test_time_split_is_one_global_cut():
    rng = np.random.default_rng(0)
    stamps = rng.integers(0, 10_000, 2000)
    codes, record = assign_splits(SplitSpec("time", 0.1, 0.2), rng.integers(0, 50, 2000), stamps)
    train, val, test = (stamps[codes == c] for c in (TRAIN, VAL, TEST))
    assert train.max() < val.min() and val.max() < test.min()
    assert record["test_cut"] == test.min() and record["val_cut"] == val.min()
    assert abs(len(test) - 400) <= 2 and abs(len(val) - 200) <= 2  # ties at a cut go to the later split


@pytest.mark.parametrize(
    "spec, message",
    [
        (SplitSpec("temporal"), "needs timestamps"),
        (SplitSpec("time"), "needs timestamps"),
    ],
)
def test_time_based_splits_need_timestamps(spec, message):
    with pytest.raises(DataError, match=message):
        assign_splits(spec, np.zeros(10, np.int64), None)


def test_an_empty_split_is_an_error():
    with pytest.raises(DataError, match="split 'test' would be empty"):
        assign_splits(SplitSpec("temporal"), np.array([0, 0, 1, 1]), np.array([1, 2, 3, 4]))
    with pytest.raises(DataError, match="same timestamp"):
        assign_splits(SplitSpec("time", 0.2, 0.2), np.zeros(10, np.int64), np.full(10, 5))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kind": "weekly"}, "--split"),
        ({"val_fraction": -0.1}, "--val-fraction"),
        ({"test_fraction": 1.0}, "--test-fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "leave no rows for train"),
        ({"leave_last": 0}, "--leave-last"),
    ],
)
def test_bad_split_options(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SplitSpec(**kwargs)


def test_user_time_order_matches_lexsort():
    rng = np.random.default_rng(3)
    users = rng.integers(0, 30, 500)
    for stamps in (rng.integers(0, 20, 500), rng.random(500).round(1)):
        assert (user_time_order(users, stamps) == np.lexsort((stamps, users))).all()
    assert (user_time_order(users, None) == np.argsort(users, kind="stable")).all()
