"""Losses of the ranking and retrieval tasks against hand-computed values."""

import math

import pytest
import torch
import torch.nn.functional as F

from recfunnel.config import HeadConfig, RetrievalConfig
from recfunnel.data.format.manifest import Label, Manifest, SplitInfo
from recfunnel.errors import ConfigError
from recfunnel.train.losses import RankingLoss, RetrievalLoss, StreamingFrequency, listwise_loss


def manifest() -> Manifest:
    return Manifest(
        kind="ctr",
        dense=[],
        sparse=[],
        labels=[Label("click"), Label("buy"), Label("stars", "regression")],
        splits={"train": SplitInfo(0, [])},
        split={},
        block_rows=1,
    )


def test_multi_task_loss_is_the_weighted_sum_of_per_head_losses():
    task = RankingLoss(
        [HeadConfig("click"), HeadConfig("buy", weight=0.5), HeadConfig("stars", "regression")], manifest()
    )
    logits = torch.tensor([[0.0, 2.0, 3.0], [1.0, -1.0, 4.0]])
    labels = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 5.0]])
    weights = torch.tensor([1.0, 0.0])  # the second row is padding
    losses = task.losses(logits, labels, weights)
    assert losses["click"].item() == pytest.approx(math.log(2))
    assert losses["buy"].item() == pytest.approx(math.log(1 + math.exp(2)))
    assert losses["stars"].item() == pytest.approx(1.0)
    assert losses["loss"].item() == pytest.approx(math.log(2) + 0.5 * math.log(1 + math.exp(2)) + 1.0)


def test_multiclass_head_takes_its_own_columns():
    m = Manifest(
        kind="ctr",
        dense=[],
        sparse=[],
        labels=[Label("grade", "multiclass")],
        splits={"train": SplitInfo(0, [])},
        split={},
        block_rows=1,
    )
    task = RankingLoss([HeadConfig("grade", "multiclass", classes=3)], m)
    logits = torch.tensor([[0.0, 1.0, 2.0]])
    loss = task.losses(logits, torch.tensor([[2.0]]), torch.ones(1))["loss"]
    assert loss.item() == pytest.approx(F.cross_entropy(logits, torch.tensor([2])).item())


def test_unknown_label_is_a_config_error():
    with pytest.raises(ConfigError, match="model.heads\\[0\\].label: no label 'clicks'"):
        RankingLoss([HeadConfig("clicks")], manifest())


def retrieval(**kwargs) -> RetrievalLoss:
    return RetrievalLoss(RetrievalConfig(**kwargs), num_items=10, batch_size=3)


def test_in_batch_softmax_without_correction_is_cross_entropy_over_the_batch():
    task = retrieval(temperature=0.5, logq_correction=False)
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    items = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, -1.0]])
    loss = task.softmax_loss(users, items, torch.tensor([1, 2, 3]), torch.ones(3))
    expected = F.cross_entropy(users @ items.T / 0.5, torch.arange(3))
    assert loss.item() == pytest.approx(expected.item())


def test_logq_correction_subtracts_the_log_of_each_candidates_probability():
    task = retrieval(temperature=1.0)
    users, items = torch.randn(3, 2), torch.randn(3, 2)
    ids = torch.tensor([1, 2, 3])
    loss = task.softmax_loss(users, items, ids, torch.ones(3))  # updates the estimate first
    q = task.frequency.probability(ids)
    expected = F.cross_entropy(users @ items.T - torch.log(q)[None, :], torch.arange(3))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_accidental_hits_are_not_negatives():
    task = retrieval(temperature=1.0, logq_correction=False)
    users, items = torch.randn(3, 2), torch.randn(3, 2)
    ids = torch.tensor([4, 7, 4])  # rows 0 and 2 have the same positive item
    loss = task.softmax_loss(users, items, ids, torch.ones(3))
    logits = users @ items.T
    logits[0, 2] = logits[2, 0] = -math.inf
    assert loss.item() == pytest.approx(F.cross_entropy(logits, torch.arange(3)).item(), rel=1e-5)
    kept = retrieval(temperature=1.0, logq_correction=False, remove_accidental_hits=False)
    assert kept.softmax_loss(users, items, ids, torch.ones(3)).item() != pytest.approx(loss.item())


def test_extra_negatives_join_the_candidates_and_respect_accidental_hits():
    task = retrieval(temperature=1.0, logq_correction=False, extra_negatives=2)
    users, items, negatives = torch.randn(2, 2), torch.randn(2, 2), torch.randn(2, 2)
    ids, negative_ids = torch.tensor([1, 2]), torch.tensor([2, 9])
    loss = task.softmax_loss(users, items, ids, torch.ones(2), negatives, negative_ids)
    logits = users @ torch.cat([items, negatives]).T
    logits[1, 2] = -math.inf  # sampled item 2 is row 1's positive
    assert loss.item() == pytest.approx(F.cross_entropy(logits, torch.arange(2)).item(), rel=1e-5)
    sampled = task.sample_negatives()
    assert sampled.shape == (2,) and bool(((sampled >= 1) & (sampled < 10)).all())


def test_streaming_frequency_learns_each_items_expected_count_per_batch():
    frequency = StreamingFrequency(num_items=6, batch_size=4)
    for step in range(400):
        frequency.update(torch.tensor([1, 1, 2, 3 if step % 2 else 4]))
    p = frequency.probability(torch.tensor([1, 2, 3, 5]))
    assert p[0].item() == pytest.approx(2.0, rel=0.01)
    assert p[1].item() == pytest.approx(1.0, rel=0.01)
    assert p[2].item() == pytest.approx(0.5, rel=0.02)
    assert 0 < p[3].item() < 0.01  # never seen: rare, but not infinitely so


def test_streaming_frequency_follows_a_drifting_stream():
    frequency = StreamingFrequency(num_items=3, batch_size=1, half_life=50)
    for _ in range(500):
        frequency.update(torch.tensor([1]))
    for _ in range(500):
        frequency.update(torch.tensor([2]))
    p = frequency.probability(torch.tensor([1, 2]))
    assert p[0].item() < 0.01 and p[1].item() > 0.95


def test_bce_retrieval_scores_pairs_by_dot_product():
    task = retrieval(loss="bce")
    users, items = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -1.0]])
    loss = task.bce_loss(users, items, torch.tensor([[1.0]]), torch.ones(1))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1.0)))


def test_early_stopping_knows_which_metrics_fall_as_models_improve():
    from recfunnel.train.loop import _improved

    for metric in ("loss", "log_loss", "rating_rmse", "label_log_loss", "rating_mae", "label_loss"):
        assert _improved(0.4, 0.5, metric) and not _improved(0.6, 0.5, metric), metric
    for metric in ("auc", "label_auc", "recall_at_100", "ndcg_at_20"):
        assert _improved(0.6, 0.5, metric) and not _improved(0.4, 0.5, metric), metric


def test_listwise_loss_is_softmax_cross_entropy_over_each_list():
    logits = torch.tensor([2.0, 0.0, -1.0, 0.5, 1.0, 0.0, 3.0, -2.0], requires_grad=True)
    labels = torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    weights = torch.ones(8)
    loss = listwise_loss(logits, labels, weights, 4)
    first = -torch.log_softmax(logits[:4], 0)[1]
    second = -(torch.log_softmax(logits[4:], 0)[0] + torch.log_softmax(logits[4:], 0)[1]) / 2
    assert loss.item() == pytest.approx(((first + second) / 2).item(), rel=1e-6)
    loss.backward()
    assert logits.grad[1] < 0 < logits.grad[0]  # the positive goes up, the others down


def test_listwise_loss_skips_padding_and_lists_without_positives():
    logits = torch.tensor([1.0, 0.0, 5.0, 0.3, 0.2, 0.1])
    labels = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    weights = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 1.0])  # row 2 is padding: not a competitor
    expected = -torch.log_softmax(logits[:2], 0)[0]
    assert float(listwise_loss(logits, labels, weights, 3)) == pytest.approx(float(expected), rel=1e-6)
    # a batch tail shorter than a list (padding) and a batch without positives
    assert float(listwise_loss(logits[:5], labels[:5], weights[:5], 3)) == pytest.approx(float(expected), rel=1e-6)
    assert float(listwise_loss(logits, torch.zeros(6), weights, 3)) == 0.0
