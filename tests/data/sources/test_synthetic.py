"""`recfunnel prepare synthetic`: Criteo-shaped rows from a known model, and its Bayes-optimal AUC."""

import filecmp
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression

from recfunnel.baselines.logistic import one_hot as design_matrix
from recfunnel.data.format.manifest import load_manifest
from recfunnel.data.format.rows import Rows
from recfunnel.data.sources.ctr_common import TEST, auc, position_uniform, random_codes
from recfunnel.data.sources.synthetic import prepare_synthetic
from recfunnel.data.sources.synthetic_model import GeneratorConfig, GroundTruth
from tests.data.readback import assert_failed_cleanly, read_split

ROWS = 20_000


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "ds"
    prepare_synthetic(ROWS, out, block_rows=1000, quiet=True)
    return out


@pytest.fixture(scope="module")
def splits(dataset) -> dict[str, Rows]:
    return {name: read_split(dataset, name)[1] for name in ("train", "val", "test")}


def one_hot(rows: Rows, manifest) -> sp.csr_matrix:
    """Raw dense features, one column per single-hot id, mean-pooled columns per multi-hot id."""
    d = rows.dense.shape[1]
    return design_matrix(rows, manifest, np.zeros(d), np.ones(d))


def test_manifest_describes_features_splits_and_bayes_metrics(dataset):
    m = load_manifest(dataset)
    assert m.kind == "ctr" and [f.name for f in m.dense] == [f"int_{i}" for i in range(13)]
    assert [f.name for f in m.single_hot] == [f"cat_{i}" for i in range(26)]
    assert [f.name for f in m.multi_hot] == ["multi_0", "multi_1"]
    assert all(f.encoding == "index" for f in m.sparse) and all(f.max_len == 5 for f in m.multi_hot)
    assert [f.cardinality for f in m.sparse] == GeneratorConfig().cardinalities()
    assert sum(s.rows for s in m.splits.values()) == ROWS
    assert 0.78 * ROWS < m.splits["train"].rows < 0.82 * ROWS
    assert set(m.extra["bayes_auc"]) == set(m.extra["bayes_logloss"]) == {"val", "test"}
    assert 0.7 < m.extra["bayes_auc"]["test"] < 0.9 and 0.3 < m.splits["train"].positives < 0.4
    assert m.extra["generator"]["config"]["seed"] == 42 and len(m.extra["generator"]["pairs"]) == 4
    assert not (dataset / "vocab").exists()


def test_indices_lengths_and_values_are_in_range(dataset, splits):
    m = load_manifest(dataset)
    cards = np.array([f.cardinality for f in m.single_hot])
    for rows in splits.values():
        assert rows.sparse.min() >= 1 and (rows.sparse < cards).all()  # generated ids: 1..cardinality-1
        assert rows.mh_lengths.min() >= 1 and rows.mh_lengths.max() <= 5
        for j, f in enumerate(m.multi_hot):
            assert len(rows.mh_values[j]) == rows.mh_lengths[:, j].sum()
            assert rows.mh_values[j].min() >= 1 and rows.mh_values[j].max() < f.cardinality
        assert np.isfinite(rows.dense).all() and rows.dense.min() >= 0
        assert set(np.unique(rows.labels)) <= {0.0, 1.0}


def test_bayes_auc_is_the_auc_of_the_true_probabilities(dataset, splits):
    m = load_manifest(dataset)
    truth = GroundTruth.from_manifest(m)
    for name in ("val", "test"):
        rows = splits[name]
        assert auc(rows.labels[:, 0], truth.probability(rows)) == pytest.approx(m.extra["bayes_auc"][name], abs=1e-6)


def test_regenerating_with_the_seed_gives_the_same_rows(dataset, splits):
    truth = GroundTruth.from_manifest(load_manifest(dataset))
    regenerated, p = truth.sample(0, ROWS)  # ROWS fits in one chunk
    codes = random_codes(position_uniform(42, 0, ROWS), 0.1, 0.1)
    expected = regenerated.take(np.flatnonzero(codes == TEST))
    got = splits["test"]  # val/test are written in generation order
    assert np.array_equal(got.sparse, expected.sparse) and np.array_equal(got.dense, expected.dense)
    assert np.array_equal(got.labels, expected.labels)
    assert np.array_equal(got.mh_values[1], expected.mh_values[1])
    assert np.allclose(truth.probability(got), p[codes == TEST])


def test_a_model_given_the_true_logit_reaches_the_bayes_auc(dataset, splits):
    m = load_manifest(dataset)
    truth = GroundTruth.from_manifest(m)
    train, test = splits["train"], splits["test"]
    model = LogisticRegression().fit(truth.logit(train)[:, None], train.labels[:, 0])
    score = auc(test.labels[:, 0], model.decision_function(truth.logit(test)[:, None]))
    assert score == pytest.approx(m.extra["bayes_auc"]["test"], abs=0.005)


def test_a_model_on_the_observed_features_stays_below_the_bayes_auc(dataset, splits):
    m = load_manifest(dataset)
    train, test = splits["train"], splits["test"]
    model = LogisticRegression(C=0.1, solver="liblinear").fit(one_hot(train, m), train.labels[:, 0])
    score = auc(test.labels[:, 0], model.decision_function(one_hot(test, m)))
    bayes = m.extra["bayes_auc"]["test"]
    assert 0.6 < score <= bayes + 0.005, (score, bayes)


def test_same_seed_same_shards_other_seed_other_rows(tmp_path):
    a, b, c = (tmp_path / name for name in "abc")
    for out, seed in ((a, 7), (b, 7), (c, 8)):
        prepare_synthetic(3000, out, seed=seed, block_rows=500, quiet=True)
    for split in ("train", "val", "test"):
        cmp = filecmp.dircmp(a / split, b / split)
        assert cmp.left_list == cmp.right_list and not cmp.diff_files and not cmp.funny_files
        assert filecmp.cmpfiles(a / split, b / split, cmp.common_files, shallow=False)[0] == cmp.common_files
    assert json.loads((a / "manifest.json").read_text()) == json.loads((b / "manifest.json").read_text())
    assert not np.array_equal(read_split(a, "test")[1].sparse[:50], read_split(c, "test")[1].sparse[:50])


def test_options_shape_the_data(tmp_path):
    out = tmp_path / "small"
    m = prepare_synthetic(
        2000,
        out,
        dense=3,
        sparse=4,
        multi_hot=1,
        max_len=3,
        cardinality=(10, 20, 30, 40, 50),
        interactions=1,
        val_fraction=0.0,
        zipf_alpha=0.0,
        positive_rate=0.5,
        quiet=True,
    )
    assert set(m.splits) == {"train", "test"} and len(m.dense) == 3
    assert [f.cardinality for f in m.sparse] == [10, 20, 30, 40, 50] and m.multi_hot[0].max_len == 3
    assert m.extra["generator"]["pairs"] == [[0, 1]] and set(m.extra["bayes_auc"]) == {"test"}
    _, rows = read_split(out, "train")
    assert rows.mh_lengths.max() <= 3 and 0.45 < rows.labels.mean() < 0.55
    assert len(np.unique(rows.sparse[:, 3])) == 39  # uniform ids (alpha 0): all of 1..39 appear


def test_one_id_features_carry_no_signal(tmp_path):
    """Cardinality 2 leaves one id per feature: a constant, so only the dense part is signal."""
    m = prepare_synthetic(2000, tmp_path / "two", cardinality=(2,), quiet=True)
    truth = GroundTruth.from_manifest(m)
    assert all(not e.any() for e in truth.effects) and all(not u.any() for u in truth.latent.values())
    assert 0.6 < m.extra["bayes_auc"]["test"] < 0.8 and 0.3 < m.splits["train"].positives < 0.4


def test_cli_writes_a_dataset(cli, tmp_path):
    out = tmp_path / "cli"
    code, _, err = cli(
        "prepare", "synthetic", "--rows", "1500", "--out", out, "--cardinality", "25", "--block-rows", "256", "--quiet"
    )
    assert code == 0, err
    m = load_manifest(out)
    assert all(f.cardinality == 25 for f in m.sparse) and m.block_rows == 256


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--cardinality", "1,2"], "--cardinality: 2 values, expected 1 or 28"),
        (["--cardinality", "ten"], "--cardinality: 'ten' is not an integer"),
        (["--cardinality", "1"], "every value must be >= 2"),
        (["--interactions", "14"], "--interactions 14 needs 28 single-hot features"),
        (["--rows", "0"], "--rows: 0, expected >= 1"),
        (["--positive-rate", "1.5"], "--positive-rate: 1.5"),
        (["--rows", "3"], "would be empty"),
    ],
)
def test_bad_options_fail_in_one_line_and_leave_nothing(cli, tmp_path, args, expected):
    out = tmp_path / "bad"
    argv = ["prepare", "synthetic", "--out", out, "--quiet"] + (args if "--rows" in args else ["--rows", "100"] + args)
    assert_failed_cleanly(cli(*argv), out, expected)


def test_kind_interactions_writes_planted_tastes(tmp_path):
    m = prepare_synthetic(1000, tmp_path / "tastes", kind="interactions", seed=3, quiet=True)
    assert m.kind == "interactions" and m.roles["user"] == "user_id" and m.roles["item"] == "item_id"
    assert sum(s.rows for s in m.splits.values()) > 0 and m.extra["generator"]


@pytest.mark.slow
def test_default_data_is_learnable_and_logistic_regression_falls_short(tmp_path):
    """The milestone's setting: 300k rows, defaults. A linear model misses the interactions."""
    out = tmp_path / "300k"
    m = prepare_synthetic(300_000, out, quiet=True)
    bayes = m.extra["bayes_auc"]["test"]
    assert 0.75 < bayes < 0.85 and 0.2 < m.splits["train"].positives < 0.4
    _, train = read_split(out, "train")
    _, test = read_split(out, "test")
    model = LogisticRegression(C=0.1, solver="liblinear").fit(one_hot(train, m), train.labels[:, 0])
    score = auc(test.labels[:, 0], model.decision_function(one_hot(test, m)))
    assert bayes - 0.06 < score < bayes - 0.02, (score, bayes)


def test_auc_matches_scikit_learn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.random(2000) < 0.3
    scores = np.round(rng.random(2000) + y * 0.3, 1)  # many ties
    assert auc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
