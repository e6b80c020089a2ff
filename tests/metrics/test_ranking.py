"""Pointwise metrics against scikit-learn and hand computations."""

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from recfunnel.metrics.ranking import (
    accuracy,
    auc,
    binary_metrics,
    calibration,
    calibration_bins,
    list_metrics,
    log_loss,
    mae,
    regression_metrics,
    rmse,
    sigmoid,
)


@pytest.fixture(scope="module")
def tied():
    rng = np.random.default_rng(0)
    y = (rng.random(3000) < 0.3).astype(np.float32)
    scores = np.round(rng.random(3000) + y * 0.3, 1)  # ~14 distinct values: many ties
    weights = rng.random(3000) * 3
    return y, scores, weights


def test_auc_by_hand():
    # pairs (pos, neg): (0.8, 0.1) right, (0.8, 0.8) tie, (0.4, 0.1) right, (0.4, 0.8) wrong -> 2.5 / 4
    assert auc([1, 0, 1, 0], [0.8, 0.1, 0.4, 0.8]) == 0.625
    assert auc([1, 0, 1, 0], [0.8, 0.1, 0.4, 0.8], weights=[1, 1, 2, 1]) == pytest.approx((1 + 0.5 + 2 * 1) / 6)


def test_auc_matches_scikit_learn_with_ties_and_weights(tied):
    y, scores, w = tied
    assert auc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    assert auc(y, scores, w) == pytest.approx(roc_auc_score(y, scores, sample_weight=w), abs=1e-12)
    assert auc(torch.from_numpy(y), torch.from_numpy(scores)) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)


def test_auc_of_one_class_is_nan_and_bad_shapes_raise():
    assert np.isnan(auc([1, 1], [0.2, 0.3]))
    with pytest.raises(ValueError, match="lengths differ"):
        auc([1, 0], [0.2])
    with pytest.raises(ValueError, match="scores: expected 1 dimension"):
        auc([1, 0], [[0.2], [0.1]])


def test_log_loss_matches_scikit_learn_and_clips(tied):
    y, scores, w = tied
    p = np.clip(scores / 1.4, 0.01, 0.99)
    assert log_loss(y, p) == pytest.approx(sk_log_loss(y, p), rel=1e-12)
    assert log_loss(y, p, w) == pytest.approx(sk_log_loss(y, p, sample_weight=w), rel=1e-12)
    assert log_loss([1, 0], [0.0, 1.0]) == pytest.approx(-(np.log(1e-15) + np.log1p(-(1 - 1e-15))) / 2)  # finite


def test_calibration_and_bins_by_hand():
    y = np.array([1, 0, 0, 1, 1, 0])
    p = np.array([0.05, 0.15, 0.55, 0.6, 0.95, 1.0])
    assert calibration(y, p) == pytest.approx(np.mean(p) / 0.5)
    assert calibration(y, p, weights=[1, 1, 1, 1, 1, 0]) == pytest.approx(np.mean(p[:5]) / 0.6)
    bins = calibration_bins(y, p, bins=4)  # [0, .25) [.25, .5) [.5, .75) [.75, 1]: the second is empty
    assert bins["count"].tolist() == [2, 2, 2]
    assert np.allclose(bins["mean_pred"], [0.1, 0.575, 0.975]) and np.allclose(bins["mean_label"], [0.5, 0.5, 0.5])


def test_regression_and_multiclass_by_hand():
    y, pred = np.array([1.0, 2.0, 4.0]), np.array([2.0, 2.0, 2.0])
    assert rmse(y, pred) == pytest.approx(np.sqrt(5 / 3)) and mae(y, pred) == pytest.approx(1.0)
    assert regression_metrics(y, pred, weights=[0, 1, 1]) == pytest.approx({"rmse": np.sqrt(2.0), "mae": 1.0})
    logits = torch.tensor([[0.1, 2.0, 0.3], [3.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 5.0, 1.0]])
    assert accuracy(torch.tensor([1, 0, 2, 2]), logits) == 0.75


def test_binary_metrics_from_logits_are_stable(tied):
    y, scores, w = tied
    z = (scores - 0.6) * 8
    got = binary_metrics(y, z, w)
    assert got["auc"] == pytest.approx(roc_auc_score(y, z, sample_weight=w), abs=1e-12)
    assert got["log_loss"] == pytest.approx(sk_log_loss(y, sigmoid(z), sample_weight=w), rel=1e-9)
    assert got["calibration"] == pytest.approx(np.average(sigmoid(z), weights=w) / np.average(y, weights=w))
    assert got["positive_rate"] == pytest.approx(np.average(y, weights=w))
    extreme = binary_metrics(np.array([1.0, 0.0, 1.0]), np.array([-1000.0, 1000.0, 800.0]))
    assert extreme["log_loss"] == pytest.approx(2000 / 3) and extreme["auc"] == 0.0  # no overflow, no clipping
    assert all(isinstance(v, float) for v in extreme.values())


def test_list_metrics_reorder_each_list_by_score():
    labels = np.array([[0, 1, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0]])
    scores = np.array([[0.1, 0.9, 0.2, 0.3], [0.0, 0.5, 0.4, 0.3], [1, 2, 3, 4]])
    out = list_metrics(scores, labels, (2,))
    g = 1 / np.log2(np.arange(2) + 2)
    first = (g[0] + g[1]) / (g[0] + g[1])  # both positives in the top 2
    second = 0.0  # its positive falls to the last place
    assert out["ndcg_at_2"] == pytest.approx((first + second) / 2)  # the list without a positive is left out
    assert out["recall_at_2"] == pytest.approx((1.0 + 0.0) / 2)
    # ties keep the list's own order: equal scores are the retriever's order
    assert list_metrics(np.zeros((1, 4)), np.array([[1, 0, 0, 0]]), (1,))["ndcg_at_1"] == 1.0
