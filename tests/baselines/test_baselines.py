"""Most-popular, EASE and logistic regression: hand-checked on tiny inputs, and on real and synthetic data."""

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from recfunnel.baselines import EASE, MostPopular, logistic_regression
from recfunnel.data.format.manifest import load_manifest
from recfunnel.data.format.pairs import read_pairs
from recfunnel.data.format.read import read_split
from recfunnel.data.sources.synthetic import prepare_synthetic
from recfunnel.errors import DataError, RecfunnelError
from recfunnel.metrics.retrieval import evaluate_topk, tfrs_accuracy

# 4 users x 5 items; user 0 (OOV) has no pairs, (2, 3) is repeated and counts once.
USERS = np.array([1, 1, 1, 2, 2, 2, 2, 3, 3, 4, 4, 4])
ITEMS = np.array([1, 2, 3, 1, 3, 4, 3, 2, 5, 1, 2, 4])


def test_most_popular_ranks_by_count_and_weight():
    model = MostPopular().fit(USERS, ITEMS, n_items=5)
    scores = model.score_users(np.array([1, 3]))
    assert scores.shape == (2, 6) and scores.dtype == torch.float32
    assert scores[0].tolist() == scores[1].tolist() == [0, 3, 3, 3, 2, 1]
    weighted = MostPopular().fit(USERS, ITEMS, n_items=5, weights=np.arange(12.0))
    assert weighted.score_users(np.array([1]))[0].tolist() == [0, 12, 18, 12, 16, 8]
    assert model.fit_seconds >= 0


def test_ease_is_the_closed_form_with_a_zero_diagonal():
    l2 = 0.7
    model = EASE(l2, dtype=torch.float64).fit(USERS, ITEMS, n_users=4, n_items=5)
    x = np.zeros((5, 5))
    x[USERS, ITEMS - 1] = 1.0  # binary: the repeated pair counts once
    p = np.linalg.inv(x.T @ x + l2 * np.eye(5))
    b = np.eye(5) - p / np.diag(p)
    weights = model.weights.numpy()
    assert np.allclose(weights[1:, 1:], b, atol=1e-12) and np.abs(np.diag(weights)).max() == 0.0
    assert not weights[0].any() and not weights[:, 0].any()
    users = np.array([2, 4, 0])
    assert np.allclose(model.score_users(users).numpy()[:, 1:], x[users] @ b, atol=1e-12)
    f32 = EASE(l2).fit(USERS, ITEMS, n_users=4, n_items=5)
    assert f32.score_users(users).dtype == torch.float32 and np.allclose(f32.weights[1:, 1:].numpy(), b, atol=1e-4)


def test_ease_refuses_a_catalogue_it_cannot_hold():
    with pytest.raises(RecfunnelError, match="EASE needs an n_items² matrix: 30001 items"):
        EASE().fit(USERS, ITEMS, n_users=4, n_items=30_001)
    with pytest.raises(ValueError, match="l2: 0"):
        EASE(0)


def test_read_pairs_names_a_missing_file(tmp_path):
    with pytest.raises(DataError, match="pairs/val.parquet: no such file"):
        read_pairs(tmp_path, "val")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "ds"
    prepare_synthetic(20_000, out, block_rows=1000, quiet=True)
    return out


def test_logistic_regression_learns_but_stays_below_the_bayes_auc(synthetic):
    m, train = read_split(synthetic, "train")
    splits = {name: read_split(synthetic, name)[1] for name in ("val", "test")}
    got = logistic_regression(train, splits, m)
    assert set(got) == {"fit", "val", "test"} and got["fit"]["features"] == 13 + sum(f.cardinality for f in m.sparse)
    for name in ("val", "test"):
        assert 0.6 < got[name]["auc"] < m.extra["bayes_auc"][name], (got[name], m.extra["bayes_auc"])
        assert got[name]["log_loss"] > m.extra["bayes_logloss"][name] - 0.01
        assert 0.8 < got[name]["calibration"] < 1.2 and got[name]["rows"] == len(splits[name])
    assert logistic_regression(train, [splits["test"]], m)["0"]["auc"] == pytest.approx(got["test"]["auc"])


@pytest.mark.slow
def test_ml100k_tfrs_protocol_figures(tmp_path, cli):
    """Random 80/20 of every rating: EASE beats most-popular, in the expected ballparks, quickly."""
    out = tmp_path / "ml"
    code, _, err = cli(
        "prepare",
        "movielens",
        "--variant",
        "ml-100k",
        "--label",
        "all",
        "--split",
        "random",
        "--val-fraction",
        "0",
        "--test-fraction",
        "0.2",
        "--out",
        out,
        "--quiet",
    )
    assert code == 0, err
    m = load_manifest(out)
    n_users, n_items = m.feature("user_id").cardinality - 1, m.feature("item_id").cardinality - 1
    train, test = read_pairs(out, "train"), read_pairs(out, "test")
    figures = {}
    for name, model in (
        ("popular", MostPopular().fit(train.users, train.items, n_items)),
        ("ease", EASE().fit(train.users, train.items, n_users, n_items)),
    ):
        start = time.perf_counter()
        got = evaluate_topk(
            model.score_users,
            test_users=test.users,
            test_items=test.items,
            n_items=n_items,
            exclude_users=train.users,
            exclude_items=train.items,
        )
        assert time.perf_counter() - start < 1.0
        figures[name] = got["accuracy_at_100"]
        assert (
            tfrs_accuracy(model.score_users, test.users, test.items, n_items, ks=(100,))["accuracy_at_100_no_exclusion"]
            < got["accuracy_at_100"]
        )
    assert 0.38 < figures["popular"] < 0.44 and 0.59 < figures["ease"] < 0.66, figures


def test_ease_knowing_scores_users_from_other_rows_with_the_same_weights():
    users, items = np.array([0, 0, 1, 1, 2, 2, 2]), np.array([1, 2, 2, 3, 1, 3, 4])
    model = EASE(l2=1.0).fit(users, items, n_users=2, n_items=4)
    same = model.knowing(users, items)
    assert torch.equal(same.score_users(np.array([0, 1, 2])), model.score_users(np.array([0, 1, 2])))
    later = model.knowing(np.r_[users, 0], np.r_[items, 4])  # user 0 also took item 4 since
    expected = torch.tensor([[0, 1, 1, 0, 1]], dtype=torch.float32) @ model.weights
    assert torch.allclose(later.score_users(np.array([0])), expected)
    assert torch.equal(later.score_users(np.array([1])), model.score_users(np.array([1])))
