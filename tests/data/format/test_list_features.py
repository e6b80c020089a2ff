"""A two-stage ranker's candidate features of one list, as its rows and the funnel compute them."""

import numpy as np
import pytest
import scipy.sparse as sp

from recfunnel.data.format.list_features import (
    AFFINITY,
    AFFINITY_RANK,
    AFFINITY_Z,
    GAP,
    RANK,
    RANK_BUCKET,
    RECENT_AFFINITY,
    RECENT_AFFINITY_Z,
    RECENT_ITEMS,
    SCORE,
    ItemNeighbours,
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
    # items 1..4 are the candidates; item 5 gives them 0.2, 0.8, 0.5, 0.8
    weights = np.zeros((8, 8), np.float32)
    weights[5, 1:5] = [0.2, 0.8, 0.5, 0.8]
    near = ItemNeighbours(sp.csr_matrix(weights))
    out = affinity_features(near, np.array([1, 2, 3, 4]), taken=np.array([5]), history=np.zeros(0))
    affinity = np.array([0.2, 0.8, 0.5, 0.8], np.float32)
    assert out[AFFINITY].tolist() == pytest.approx(affinity.tolist())
    assert out[AFFINITY_Z].tolist() == pytest.approx(((affinity - affinity.mean()) / affinity.std()).tolist())
    assert out[AFFINITY_RANK].tolist() == pytest.approx(np.log1p([3, 0, 2, 1]).tolist())  # ties: list order
    assert out[RECENT_AFFINITY].tolist() == [0, 0, 0, 0] and out[RECENT_AFFINITY_Z].tolist() == [
        0,
        0,
        0,
        0,
    ]  # no spread: 0


def test_recent_affinity_reads_only_the_latest_items_of_the_history():
    weights = np.zeros((12, 12), np.float32)
    weights[6, 1] = 1.0  # the latest item points at candidate 1
    weights[6 + RECENT_ITEMS, 2] = 1.0  # an item past the recent window points at candidate 2
    near = ItemNeighbours(sp.csr_matrix(weights))
    history = np.arange(6, 6 + RECENT_ITEMS + 1)  # the latest first; the last one is outside the window
    out = affinity_features(near, np.array([1, 2, 3]), taken=np.zeros(0, np.int64), history=history)
    assert out[AFFINITY].tolist() == [1, 1, 0]  # the whole profile sees both
    assert out[RECENT_AFFINITY].tolist() == [1, 0, 0]
