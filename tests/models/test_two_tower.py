"""The two-tower model with the user's history: a known answer it must find."""

import json

import pytest
import torch
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recfunnel.cli import main
from recfunnel.config import load_config
from recfunnel.data.sources.synthetic_interactions import prepare_synthetic_interactions
from recfunnel.models.parts import SequenceAttention
from recfunnel.models.two_tower import build_two_tower, with_empty, with_recent

ROWS, USERS, ITEMS = 24_000, 400, 300


def test_the_recent_window_is_the_first_ids_of_each_history():
    sparse = KeyedJaggedTensor.from_lengths_sync(
        keys=["user_id", "history"],
        values=torch.tensor([7, 8, 9, 1, 2, 3, 4, 5, 6, 10, 11]),
        lengths=torch.tensor([1, 1, 1, 5, 0, 3]),
    )
    out = with_recent(sparse, "history", 2)
    assert out.keys() == ["user_id", "history", "history_recent"]
    assert [v.tolist() for v in out["history_recent"].to_dense()] == [[1, 2], [], [6, 10]]
    assert [v.tolist() for v in out["history"].to_dense()] == [[1, 2, 3, 4, 5], [], [6, 10, 11]]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A tiny interactions dataset with a history (users: segment, history; items: category, tags,
    popularity)."""
    folder = tmp_path_factory.mktemp("small") / "data"
    return prepare_synthetic_interactions(600, folder, users=20, items=30, history=10, label="all", quiet=True)


def _two_tower(manifest, *overrides):
    cfg = load_config("two-tower", overrides=["model.embedding_dim=4", "model.tower_mlp=[8, 3]", *overrides]).model
    return build_two_tower(manifest, cfg).eval()


def _tables(model):
    return {c.name: c.feature_names for c in model.sparse_arch.embedding_bag_collection.embedding_bag_configs()}


def _users_and_items():
    """Three (user, item) pairs: every key of the small dataset, the second user with no history."""
    keys = ["user_id", "segment", "history", "item_id", "category", "tags"]
    lists = {
        "user_id": [[1], [2], [3]],
        "segment": [[1], [4], [2]],
        "history": [[3, 7, 9], [], [5]],
        "item_id": [[4], [8], [30]],
        "category": [[2], [1], [8]],
        "tags": [[1, 2], [], [8]],
    }
    values = torch.tensor([v for k in keys for row in lists[k] for v in row])
    lengths = torch.tensor([len(row) for k in keys for row in lists[k]])
    # the dense columns: popularity (the item's), example_age (the user's)
    dense = torch.tensor([[0.5, -1.0], [1.0, 0.0], [2.0, 1.5]])
    return dense, KeyedJaggedTensor.from_lengths_sync(keys, values, lengths)


def test_the_history_is_looked_up_in_the_item_id_table_unless_told_otherwise(small):
    shared = _two_tower(small)
    assert _tables(shared)["item_id"] == ["item_id", "history", "history_recent"] and "history" not in _tables(shared)
    dense, kjt = _users_and_items()
    pooled = shared._pooled(kjt)
    items = shared.sparse_arch.embedding_bag_collection.embedding_bags["item_id"].weight
    names = shared.sparse_arch.feature_names
    assert torch.allclose(
        pooled[:, names.index("history")], torch.stack([items[[3, 7, 9]].mean(0), 0 * items[0], items[5]])
    )
    assert torch.allclose(pooled[:, names.index("item_id")], items[[4, 8, 30]])
    own = _two_tower(small, "model.share_item_table=false")
    assert _tables(own)["history"] == ["history", "history_recent"] and _tables(own)["item_id"] == ["item_id"]


def test_one_tower_from_its_own_inputs_equals_its_side_of_the_pairs(small):
    model = _two_tower(small)
    dense, kjt = _users_and_items()
    users, items = model(dense, kjt)
    for role, expected in (("user", users), ("item", items)):
        keys, dense_names = model.inputs(role)
        own = kjt.permute([kjt.keys().index(k) for k in keys])
        assert "item_id" not in keys if role == "user" else "history" not in keys
        columns = [[f.name for f in small.dense].index(name) for name in dense_names]
        torch.testing.assert_close(model.embed(role, dense[:, columns], own), expected)


def test_missing_features_are_added_as_empty_lists():
    sparse = KeyedJaggedTensor.from_lengths_sync(["a"], torch.tensor([4, 5]), torch.tensor([1, 1]))
    out = with_empty(sparse, ["a", "b", "c"])
    assert (
        out.keys() == ["a", "b", "c"] and out["b"].lengths().tolist() == [0, 0] and out["a"].values().tolist() == [4, 5]
    )
    assert with_empty(sparse, ["a"]) is sparse


def test_attention_pooling_starts_as_the_mean_and_weights_items_by_their_scores():
    table = EmbeddingConfig(name="history", embedding_dim=4, num_embeddings=12, feature_names=["history"])
    pool = SequenceAttention(table, max_len=3)
    sparse = KeyedJaggedTensor.from_lengths_sync(
        keys=["history"], values=torch.tensor([1, 2, 3, 4, 5, 6]), lengths=torch.tensor([4, 0, 2])
    )
    weight = pool.embedding_collection.embeddings["history"].weight
    with torch.no_grad():
        out = pool(sparse)  # a zero query: the plain mean of the first max_len items
    assert torch.allclose(out[0], weight[[1, 2, 3]].mean(0), atol=1e-6)  # the fourth item is past max_len
    assert torch.equal(out[1], torch.zeros(4)) and torch.allclose(out[2], weight[[5, 6]].mean(0), atol=1e-6)
    with torch.no_grad():
        pool.query.copy_(torch.tensor([50.0, 0, 0, 0]))
        pool.key.weight.copy_(torch.eye(4))
        pool.key.bias.zero_()
        pool.place.zero_()
        weight[2] = torch.tensor([5.0, 0, 0, 0])  # the one item that scores high
        out = pool(sparse)
    assert torch.allclose(out[0], weight[2], atol=1e-3)  # attention puts (nearly) all weight on it


@pytest.mark.slow
def test_with_history_it_recovers_a_planted_chain_of_items_and_without_it_cannot(tmp_path):
    """Each user's next item is the planted successor of their last one (probability 0.9): a model
    that sees the user's history finds the test item; one that knows the user only by id cannot
    (its test item depends on where the user's sequence ended, not on who the user is). The default
    split: the test row's history holds the user's validation row, what serving would know."""
    ndcg = {}
    for history, pooling in ((50, "mean"), (50, "attention"), (0, "mean")):
        data, run = tmp_path / f"data-{history}", tmp_path / f"run-{history}-{pooling}"
        if not data.exists():
            manifest = prepare_synthetic_interactions(
                ROWS, data, users=USERS, items=ITEMS, markov=0.9, history=history, label="all", quiet=True
            )
        args = ["--data", str(data), "--out", str(run), "--quiet", "--set", f"model.history_pooling={pooling}"]
        if not history:  # the user by id alone: the example age would tell where their sequence is
            args += ["--set", "model.user_features=[user_id]"]
        assert main(["train", "--model", "two-tower", *args]) == 0
        ndcg[history, pooling] = json.loads((run / "metrics.json").read_text())["test"]["ndcg_at_10"]
    # measured: NDCG@10 0.73 with the mean and the latest five apart, 0.86 with attention over
    # the history (the chain's ceiling: 87 % of the test rows follow it), 0.12 by id alone (EASE:
    # 0.27); 0.38 without history but with the example age, which tells where a user's sequence is
    assert manifest.extra["chain_next_share"] > 0.8
    assert ndcg[50, "mean"] > 0.5 and ndcg[50, "mean"] > 3 * ndcg[0, "mean"], ndcg
    assert ndcg[50, "attention"] > 0.6 and ndcg[50, "attention"] > 3 * ndcg[0, "mean"], ndcg


@pytest.mark.slow
def test_attention_pooling_trains_on_two_processes_and_serves_from_the_model_folder(tmp_path):
    import subprocess
    import sys

    from recfunnel.funnel.pipeline import Funnel

    data, run = tmp_path / "data", tmp_path / "run"
    prepare_synthetic_interactions(6000, data, history=8, quiet=True)
    cmd = [sys.executable, "-m", "recfunnel.cli", "train", "--model", "two-tower", "--data", str(data)]
    cmd += ["--out", str(run), "--quiet", "--set", "model.history_pooling=attention", "--set", "train.epochs=2"]
    done = subprocess.run([*cmd, "--launcher", "torchrun", "--nproc", "2"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["world_size"] == 2 and 0 < metrics["test"]["recall_at_100"] <= 1
    assert "history" in (run / "sharding_plan.txt").read_text()  # the unpooled table was planned and sharded
    funnel = Funnel.load(run)
    seen = [len(funnel.interactions.seen(int(u))) for u in funnel.users.index]
    user = funnel.users.raw_ids[min(range(len(seen)), key=seen.__getitem__)].item()  # the most left to see
    assert len(funnel.recommend(user_id=user, k=5).items) == 5
