"""A ranker trained on a retriever's candidates (`recfunnel train --retriever`): the lists are the
retriever's exact top N of each user's unseen items, labelled by the later split; the loader keeps
each list whole; the funnel builds the ranker's inputs exactly as the lists hold them."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from recfunnel.data.format.list_features import AFFINITY, RANK, RANK_BUCKET, SCORE, ItemNeighbours
from recfunnel.data.format.manifest import load_manifest
from recfunnel.data.format.pairs import read_pairs
from recfunnel.data.stream.loader import StreamingBatchLoader
from recfunnel.funnel.pipeline import Funnel
from recfunnel.retrieval.embeddings import tower_embeddings
from recfunnel.store.model import load_trained
from tests.data.readback import read_split

N = 16  # candidates a list: synthetic users have seen about half of the 60 items
QUICK = ["--quiet", "--set", "train.batch_size=256", "--set", "eval.baselines=false"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from recfunnel.cli import main

    root = tmp_path_factory.mktemp("two-stage")
    data = root / "data"
    assert (
        main(["prepare", "synthetic", "--kind", "interactions", "--rows", "6000", "--out", str(data), "--quiet"]) == 0
    )
    assert main(["train", "--model", "two-tower", "--data", str(data), "--out", str(root / "tt"), *QUICK]) == 0
    ranker = ["--retriever", str(root / "tt"), "--set", f"ranking.candidates={N}", "--set", "train.epochs=3"]
    assert main(["train", "--model", "dlrm", "--data", str(data), "--out", str(root / "dlrm"), *QUICK, *ranker]) == 0
    return root


def _lists(folder, split):
    manifest = load_manifest(folder)
    _, rows = read_split(folder, split, manifest)
    n = manifest.extra["list_rows"]
    col = {key: j for j, key in enumerate(manifest.sparse_keys[: rows.sparse.shape[1]])}
    dense = {f.name: rows.dense[:, j].reshape(-1, n) for j, f in enumerate(manifest.dense)}
    return (
        manifest,
        rows,
        rows.sparse[:, col["user_id"]].reshape(-1, n),
        rows.sparse[:, col["item_id"]].reshape(-1, n),
        rows.labels[:, 0].reshape(-1, n),
        dense,
    )


def test_lists_are_the_retrievers_exact_top_n_of_unseen_items_labelled_by_the_later_split(runs):
    data, folder = runs / "data", runs / "dlrm" / "candidates"
    retriever = load_trained(runs / "tt")
    items_cat, item_vectors = tower_embeddings(retriever, "item")
    pairs = {s: read_pairs(data, s) for s in ("train", "val", "test")}
    held = {}
    for split, target, before in (
        ("train", "val", ["train"]),
        ("val", "val", ["train"]),
        ("test", "test", ["train", "val"]),
    ):
        manifest, _, users, items, labels, dense = _lists(folder, split)
        # the users as of the lists' split: at val their history holds training rows only
        users_cat, user_vectors = tower_embeddings(retriever, "user", as_of=target)
        assert manifest.extra["list_rows"] == N and len(users) > 0
        assert (users == users[:, :1]).all()  # one user a list
        held[split] = set(users[:, 0].tolist())
        seen = {(u, i) for s in before for u, i in zip(pairs[s].users.tolist(), pairs[s].items.tolist())}
        later = pairs[target]
        positive = {
            (u, i) for u, i, y in zip(later.users.tolist(), later.items.tolist(), later.labels.tolist()) if y > 0
        }
        for u, row_items, row_labels, rank in zip(users[:, 0], items, labels, dense[RANK]):
            scores = user_vectors[users_cat.positions_of(np.array([u]))[0]] @ item_vectors.T
            unseen = [(s, i) for s, i in zip(scores, items_cat.index) if (u, i) not in seen]
            top = [i for _, i in sorted(unseen, key=lambda p: -p[0])[:N]]
            assert sorted(row_items.tolist()) == sorted(top), u  # the exact top N, none seen before
            assert row_labels.tolist() == [float((u, i) in positive) for i in row_items.tolist()]
            assert row_labels.any()  # lists without a positive are left out
            assert rank.tolist() == pytest.approx(np.log1p(np.arange(N)).tolist())
        assert (np.diff(dense[SCORE], axis=1) <= 1e-6).all()  # the retriever's order
    assert not held["train"] & held["val"]  # the ranker's epoch is chosen on other users' lists
    summary = json.loads((runs / "dlrm" / "metrics.json").read_text())["candidates"]
    assert summary["seconds"] > 0 and summary["candidates_per_s"] > 0


def test_the_loader_shuffles_whole_lists(runs):
    folder = runs / "dlrm" / "candidates"
    manifest = load_manifest(folder)
    seen_lists = []
    with StreamingBatchLoader(folder, "train", batch_size=4 * N, shuffle=True, seed=3, manifest=manifest) as loader:
        for batch in loader:
            users = batch.sparse["user_id"].values().reshape(-1, N) if len(batch) % N == 0 else None
            assert users is not None and (users == users[:, :1]).all()
            seen_lists += users[:, 0].tolist()
    _, _, users, *_ = _lists(folder, "train")
    assert sorted(seen_lists) == sorted(users[:, 0].tolist())  # every list once
    assert seen_lists != users[:, 0].tolist()  # in another order than written


class _Recorder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, dense, kjt):
        self.calls.append((dense.clone(), kjt))
        return self.model(dense, kjt)


def test_the_funnel_gives_the_ranker_the_inputs_of_the_test_lists(runs):
    funnel = Funnel.load(runs / "tt", ranker=runs / "dlrm", config={"candidates": N, "rerank": "none"})
    recorder = _Recorder(funnel.ranker.model)
    funnel.ranker = dataclasses.replace(funnel.ranker, model=recorder)
    manifest, rows, users, items, _, dense = _lists(runs / "dlrm" / "candidates", "test")
    assert {RANK_BUCKET, AFFINITY} <= {*manifest.sparse_keys, *(f.name for f in manifest.dense)}
    checked = 0
    for row, u in enumerate(users[:20, 0]):
        raw = funnel.users.raw_ids[funnel.users.positions_of(np.array([u]))[0]]
        recorder.calls.clear()
        funnel.recommend(user_id=raw.item() if hasattr(raw, "item") else raw, k=N)
        ((online_dense, kjt),) = recorder.calls
        assert kjt["item_id"].values().tolist() == items[row].tolist()  # the same candidates, same order
        lo, hi = row * N, (row + 1) * N
        assert online_dense.numpy() == pytest.approx(rows.dense[lo:hi], abs=1e-5)
        for j, key in enumerate(manifest.sparse_keys[: rows.sparse.shape[1]]):
            assert kjt[key].values().tolist() == rows.sparse[lo:hi, j].tolist(), key
        for j, feature in enumerate(manifest.multi_hot):
            start = int(rows.mh_lengths[:lo, j].sum())
            offline = rows.mh_values[j][start : start + int(rows.mh_lengths[lo:hi, j].sum())]
            assert kjt[feature.name].values().tolist() == offline.tolist(), feature.name
        checked += 1
    assert checked == min(20, len(users))
    assert dense[AFFINITY].std() > 0  # the affinity varies: the check above compares real values


def test_item_neighbours_from_weights_keep_each_columns_largest():
    weights = np.array([[0.0, 0.5, -0.1], [0.2, 0.0, 0.3], [-0.9, 0.05, 0.0]], np.float32)
    near = ItemNeighbours.from_weights(weights, k=1)
    assert near.matrix.toarray() == pytest.approx(np.array([[0, 0.5, 0], [0, 0, 0.3], [-0.9, 0, 0]]))
    # a candidate's affinity: the weights summed over the items of the profile, each once
    full = ItemNeighbours.from_weights(weights, k=3)
    assert full.affinity(np.array([0, 1, 2]), np.array([1, 2, 2])).tolist() == pytest.approx([-0.7, 0.05, 0.3])
    assert full.affinity(np.array([0, 1]), np.array([], np.int64)).tolist() == [0, 0]
    sparse_only = ItemNeighbours.from_weights(weights, k=3)
    sparse_only.dense = None  # a catalogue too large to hold dense: the same sums from the sparse rows
    assert sparse_only.affinity(np.array([0, 1, 2]), np.array([1, 2, 2])).tolist() == pytest.approx([-0.7, 0.05, 0.3])


def test_retriever_mistakes_are_one_line_errors(cli, runs, tmp_path):
    code, _, err = cli(
        "train", "--model", "dlrm", "--data", runs / "data", "--out", tmp_path / "r", "--retriever", runs / "dlrm"
    )
    assert code != 0 and "is a dlrm run; give a two-tower run" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(
        "train", "--model", "two-tower", "--data", runs / "data", "--out", tmp_path / "r", "--retriever", runs / "tt"
    )
    assert code != 0 and "--retriever: for rankers" in err


def _train(*args):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "recfunnel.cli", "train", "--model", "dlrm", *QUICK, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_two_stage_training_runs_on_two_processes_and_resumes_reusing_its_lists(runs, tmp_path):
    common = ["--data", runs / "data", "--retriever", runs / "tt", "--set", f"ranking.candidates={N}"]
    common += ["--set", "train.batch_size=64", "--set", "train.epochs=2"]
    two = tmp_path / "two"
    _train(*common, "--out", two, "--launcher", "torchrun", "--nproc", "2")
    metrics = json.loads((two / "metrics.json").read_text())
    assert (
        metrics["train"]["world_size"] == 2 and metrics["train"]["epochs"][0]["rows"] == metrics["train"]["train_rows"]
    )
    assert 0 <= metrics["test"]["ndcg_at_10"] <= 1 and "retrieval_ndcg_at_10" in metrics["test"]
    # the lists are those one process builds: the same rows
    assert load_manifest(two / "candidates").splits == load_manifest(runs / "dlrm" / "candidates").splits

    run = tmp_path / "resumed"
    _train(*common, "--out", run, "--set", "train.checkpoint_every=3", "--set", "train.max_steps=3")
    (run / "metrics.json").unlink()  # as if it had been stopped there
    built = (run / "candidates" / "manifest.json").stat().st_mtime_ns
    _train(*common, "--out", run, "--resume", "--set", "train.max_steps=0")
    assert (run / "candidates" / "manifest.json").stat().st_mtime_ns == built  # reused, not built again
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["resumed_from_step"] == 3 and metrics["early_stopping"]["epochs"] == 2
