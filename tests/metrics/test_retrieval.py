"""Top-K retrieval metrics on a hand-computed 3 users x 5 items case, and against a per-user loop."""

import math

import numpy as np
import pytest
import torch

from recfunnel.metrics.retrieval import evaluate_topk, relative_change_interval, tfrs_accuracy

# Column 0 is the OOV item: its high score must never count. User 3 ties items 1 and 2.
SCORES = torch.tensor(
    [
        [0.0, 0, 0, 0, 0, 0],  # user 0: unused
        [9.0, 5, 4, 3, 2, 1],  # user 1 ranks items 1 2 3 4 5
        [9.0, 1, 2, 3, 4, 5],  # user 2 ranks items 5 4 3 2 1
        [9.0, 3, 3, 1, 2, 0],  # user 3 ranks items {1 2} 4 3 5
    ]
)
TEST_USERS, TEST_ITEMS = np.array([1, 1, 2, 3]), np.array([2, 4, 5, 2])
TRAIN_USERS, TRAIN_ITEMS = np.array([1, 2, 3]), np.array([1, 4, 1])
L3 = 1 / math.log2(3)  # the gain at rank 1 (0-based)


def score(users: np.ndarray) -> torch.Tensor:
    return SCORES[torch.from_numpy(users)]


def evaluate(**kw):
    return evaluate_topk(score, test_users=TEST_USERS, test_items=TEST_ITEMS, n_items=5, **kw)


def test_hand_computed_without_exclusion():
    # 0-based ranks: user 1 -> item 2 at 1, item 4 at 3; user 2 -> item 5 at 0;
    # user 3 -> item 2 at 1 (tied with item 1, which goes first: ties count against the item).
    got = evaluate(ks=(1, 2))
    assert got["recall_at_1"] == pytest.approx(1 / 3) and got["hit_rate_at_1"] == pytest.approx(1 / 3)
    assert got["ndcg_at_1"] == pytest.approx(1 / 3) and got["accuracy_at_1"] == 0.25
    assert got["recall_at_2"] == pytest.approx((0.5 + 1 + 1) / 3) and got["hit_rate_at_2"] == 1.0
    assert got["ndcg_at_2"] == pytest.approx((L3 / (1 + L3) + 1 + L3) / 3) and got["accuracy_at_2"] == 0.75
    assert got["mrr"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert got["users"] == 3 and got["pairs"] == 4


def test_hand_computed_with_train_items_excluded():
    # Excluding (1, 1), (2, 4), (3, 1): user 1 -> item 2 at 0, item 4 at 2; user 2 -> 0; user 3 -> 0.
    got = evaluate(ks=(1, 3), exclude_users=TRAIN_USERS, exclude_items=TRAIN_ITEMS)
    assert got["recall_at_1"] == pytest.approx((0.5 + 1 + 1) / 3) and got["hit_rate_at_1"] == 1.0
    assert got["ndcg_at_1"] == 1.0 and got["accuracy_at_1"] == 0.75
    assert got["recall_at_3"] == 1.0 and got["accuracy_at_3"] == 1.0
    assert got["ndcg_at_3"] == pytest.approx(((1 + 0.5) / (1 + L3) + 2) / 3) and got["mrr"] == 1.0


def test_an_excluded_test_item_is_a_miss_even_with_room_in_the_top_k():
    got = evaluate(ks=(5,), exclude_users=np.array([2]), exclude_items=np.array([5]))
    assert got["recall_at_5"] == pytest.approx(2 / 3) and got["accuracy_at_5"] == 0.75
    assert got["mrr"] == pytest.approx((0.5 + 0 + 0.5) / 3)


def test_tfrs_accuracy_is_the_no_exclusion_accuracy():
    assert tfrs_accuracy(score, TEST_USERS, TEST_ITEMS, 5, ks=(1, 2)) == {
        "accuracy_at_1_no_exclusion": 0.25,
        "accuracy_at_2_no_exclusion": 0.75,
    }


def test_repeated_test_pairs_count_once_per_user_and_each_time_for_accuracy():
    got = evaluate_topk(score, test_users=np.array([2, 2, 1]), test_items=np.array([5, 5, 4]), n_items=5, ks=(1,))
    assert got["recall_at_1"] == 0.5 and got["ndcg_at_1"] == 0.5 and got["accuracy_at_1"] == pytest.approx(2 / 3)


def reference(scores: np.ndarray, users, items, ex_users, ex_items, k: int) -> dict[str, float]:
    """A per-user loop: the module docstring's rules, written plainly."""
    recall, ndcg, hit, mrr, acc = [], [], [], [], []
    for u in np.unique(users):
        s = scores[u].astype(np.float64).copy()
        s[0] = -np.inf
        s[ex_items[ex_users == u]] = -np.inf
        rel = np.unique(items[users == u])
        ranks = np.array([np.inf if s[i] == -np.inf else (s >= s[i]).sum() - 1 for i in rel])
        hits = ranks < k
        recall.append(hits.mean())
        hit.append(hits.any())
        dcg = (1 / np.log2(ranks[hits] + 2)).sum()
        ndcg.append(dcg / (1 / np.log2(np.arange(min(k, len(rel))) + 2)).sum())
        mrr.append(1 / (ranks.min() + 1))
        acc.extend([r < k for r in ranks[np.searchsorted(rel, items[users == u])]])
    return {
        f"recall_at_{k}": np.mean(recall),
        f"ndcg_at_{k}": np.mean(ndcg),
        f"hit_rate_at_{k}": np.mean(hit),
        "mrr": np.mean(mrr),
        f"accuracy_at_{k}": np.mean(acc),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_a_per_user_loop_on_random_tied_scores_in_small_batches(dtype):
    rng = np.random.default_rng(1)
    n_users, n_items = 40, 30
    scores = rng.integers(0, 6, size=(n_users + 1, n_items + 1)).astype(np.float64)  # many ties
    users, items = rng.integers(1, n_users + 1, 150), rng.integers(0, n_items + 1, 150)
    ex_users, ex_items = rng.integers(1, n_users + 1, 300), rng.integers(1, n_items + 1, 300)
    table = torch.tensor(scores, dtype=dtype)
    got = evaluate_topk(
        lambda u: table[torch.from_numpy(u)],
        test_users=users,
        test_items=items,
        n_items=n_items,
        exclude_users=ex_users,
        exclude_items=ex_items,
        ks=(5, 10),
        batch_users=7,
    )
    for k in (5, 10):
        want = reference(scores, users, items, ex_users, ex_items, k)
        assert {name: got[name] for name in want} == pytest.approx(want)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="expected \\(3, 6\\)"):
        evaluate_topk(lambda u: torch.zeros(len(u), 5), test_users=TEST_USERS, test_items=TEST_ITEMS, n_items=5)
    with pytest.raises(ValueError, match="NaN"):
        evaluate_topk(
            lambda u: torch.full((len(u), 6), math.nan), test_users=TEST_USERS, test_items=TEST_ITEMS, n_items=5
        )
    with pytest.raises(ValueError, match="test_items: indices must be in \\[0, 5\\]"):
        evaluate_topk(score, test_users=np.array([1]), test_items=np.array([6]), n_items=5)
    with pytest.raises(ValueError, match="give both or neither"):
        evaluate(exclude_users=TRAIN_USERS)


def test_per_user_ndcg_averages_to_the_reported_one():
    by_user: dict = {}
    out = evaluate(ks=(1, 3), by_user=by_user, batch_users=2)  # two batches: the per-user arrays join
    assert by_user["users"].tolist() == [1, 2, 3] and len(by_user["ndcg_at_3"]) == 3
    for k in (1, 3):
        assert by_user[f"ndcg_at_{k}"].mean() == pytest.approx(out[f"ndcg_at_{k}"])
    assert by_user["ndcg_at_1"][1] == 1.0  # user 2 ranks its one test item first


def test_the_bootstrap_interval_holds_the_gap_and_narrows_with_more_users():
    rng = np.random.default_rng(0)
    theirs = rng.uniform(0, 1, 2000)
    ours = theirs * 1.1 + rng.normal(0, 0.1, 2000)
    change = ours.mean() / theirs.mean() - 1
    few, many = relative_change_interval(ours[:100], theirs[:100]), relative_change_interval(ours, theirs)
    assert many[0] < change < many[1] and few[1] - few[0] > 2 * (many[1] - many[0])
    assert relative_change_interval(theirs, theirs) == (0.0, 0.0)  # the same model: no gap at all
    with pytest.raises(ValueError, match="equal"):
        relative_change_interval(ours, theirs[:5])
