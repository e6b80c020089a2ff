"""A two-stage ranker's candidate features of one list, as its rows and the funnel compute them."""

import numpy as np
import pytest

from recfunnel.data.format.list_features import (
    AFFINITY_RANK,
    AFFINITY_Z,
    GAP,
    RANK,
    RANK_BUCKET,
    SCORE,
    affinity_features,
    list_features,
)


def test_list_features_place_each_candidate_against_the_list_and_the_training_scores():
    out = list_features(np.array([3.0, 2.0, 1.5, 0.5], np.float32), scale=(1.0, 2.0))
    assert out[SCORE].tolist() == pytest.approx([1.0, 0.5, 0.25, -0.25])  # on the training lists' scale
    assert out[GAP].tolist() == pytest.approx([0, -0.5, -0.75, -1.25])  # behind the list's best
    assert out[RANK].tolist() == pytest.approx(np.log1p([0, 1, 2, 3]).tolist())
    assert out[RANK_BUCKET].tolist() == [1, 2, 2, 3]  # 1 + floor(log2(1 + position))


def test_affinity_features_standardise_and_rank_within_the_list():
    affinity = np.array([0.2, 0.8, 0.5, 0.8], np.float32)
    out = affinity_features(affinity)
    assert out[AFFINITY_Z].tolist() == pytest.approx(((affinity - affinity.mean()) / affinity.std()).tolist())
    assert out[AFFINITY_RANK].tolist() == pytest.approx(np.log1p([3, 0, 2, 1]).tolist())  # ties: list order
    assert affinity_features(np.ones(3, np.float32))[AFFINITY_Z].tolist() == [0, 0, 0]  # no spread: 0, not NaN
