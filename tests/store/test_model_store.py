"""The model store: a model folder carries what serving needs of its training data (each user's
seen items, item popularity), so `index`, `recommend` and `serve` run after the dataset is gone."""

import json

import httpx
import numpy as np
import pandas as pd
import pytest

from recfunnel.data.format.manifest import load_manifest
from recfunnel.data.format.pairs import earlier_splits, item_popularity, read_pairs
from recfunnel.data.sources.synthetic_interactions import prepare_synthetic_interactions
from recfunnel.errors import DataError
from recfunnel.serve.process import ServerProcess
from recfunnel.store.interactions import INTERACTIONS, load_interactions, save_interactions

FAST = [
    "--quiet",
    "--set",
    "train.epochs=1",
    "--set",
    "train.batch_size=256",
    "--set",
    "train.max_steps=8",
    "--set",
    "eval.baselines=false",
    "--set",
    "tracking.log_checkpoints=false",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "data"
    prepare_synthetic_interactions(3000, out, users=80, items=120, quiet=True)
    return out


def test_seen_items_are_every_train_and_val_pair_and_popularity_the_train_positives(data, tmp_path):
    manifest = load_manifest(data)
    assert earlier_splits("test", manifest.splits) == ["train", "val"] and earlier_splits("val", ["train"]) == ["train"]
    saved = save_interactions(tmp_path, data, manifest)
    loaded = load_interactions(tmp_path, manifest)
    train, val, test = (read_pairs(data, split) for split in ("train", "val", "test"))
    items = manifest.feature("item_id").cardinality
    for interactions in (saved, loaded):
        assert np.array_equal(interactions.popularity, item_popularity(train, items))
        assert interactions.popularity.sum() == (train.labels > 0).sum()  # positives only, train only
        for user in np.unique(np.concatenate([train.users, val.users, test.users])):
            want = np.sort(np.concatenate([train.items[train.users == user], val.items[val.users == user]]))
            assert np.array_equal(interactions.seen(int(user)), want)  # any label, ascending
    assert len(loaded.seen(0)) == 0 and len(loaded.seen(10**6)) == 0  # OOV and unknown users: nothing
    assert (tmp_path / INTERACTIONS).is_file()
    assert set(pd.read_parquet(tmp_path / INTERACTIONS)["split"].astype(str)) == {"train", "val"}


def test_a_folder_without_interactions_is_a_one_line_error(data, tmp_path):
    with pytest.raises(DataError, match=f"{INTERACTIONS}: missing; .* train the model again"):
        load_interactions(tmp_path, load_manifest(data))


@pytest.mark.slow
def test_index_recommend_and_serve_work_after_the_dataset_is_moved_away(cli, data, tmp_path):
    runs = tmp_path
    for model in ("two-tower", "dlrm"):
        assert cli("train", "--model", model, "--data", data, "--out", runs / model, *FAST)[0] == 0
    funnel = ["--run", runs / "two-tower", "--ranker", runs / "dlrm"]
    assert cli("recommend", *funnel, "--k", 5, "--out", runs / "before.parquet", "--quiet")[0] == 0
    away = data.with_name("moved-away")
    data.rename(away)
    try:
        code, out, err = cli("index", "--run", runs / "two-tower", "--out", runs / "index")
        assert code == 0 and "exact index of 120 items" in out, err
        code, _, err = cli(
            "recommend", *funnel, "--index", runs / "index", "--k", 5, "--out", runs / "after.parquet", "--quiet"
        )
        assert code == 0, err
        before, after = pd.read_parquet(runs / "before.parquet"), pd.read_parquet(runs / "after.parquet")
        users = pd.read_parquet(runs / "two-tower" / "model" / "users.parquet")["user_id"]
        assert before["user_id"].nunique() == len(users) and len(before) > 4 * len(users)
        assert before[["user_id", "item_id"]].equals(after[["user_id", "item_id"]])
        user = int(before["user_id"].iloc[0])
        code, out, err = cli("recommend", *funnel, "--k", 3, "--user", user)  # no --index: exact, in memory
        assert code == 0 and f"user {user} (user" in out, err
        with ServerProcess(funnel) as server, httpx.Client(base_url=server.url, timeout=30) as client:
            answer = client.post("/recommend", json={"user_id": user, "k": 5})
            assert answer.status_code == 200, answer.text
            assert [i["item_id"] for i in answer.json()["items"]] == before[before.user_id == user]["item_id"].tolist()
        # what needs the held-out split says where it looked, in one line
        code, _, err = cli("evaluate", *funnel)
        assert code == 2 and "which is not here; pass --data DIR" in err and err.count("\n") == 1
        assert cli("evaluate", *funnel, "--data", away)[0] == 0
    finally:
        away.rename(data)


def test_recorded_metrics_need_no_dataset(cli, data, tmp_path):
    assert cli("train", "--model", "dlrm", "--data", data, "--out", tmp_path / "run", *FAST)[0] == 0
    away = data.with_name("moved-away-too")
    data.rename(away)
    try:
        code, out, _ = cli("evaluate", "--run", tmp_path / "run", "--json")
        assert code == 0 and json.loads(out)["model"] == "dlrm"
    finally:
        away.rename(data)


def test_weights_that_do_not_fit_the_model_are_a_one_line_error_naming_the_file(cli, data, tmp_path):
    import torch

    from recfunnel.errors import RecfunnelError
    from recfunnel.store.model import load_trained

    run = tmp_path / "two-tower"
    assert cli("train", "--model", "two-tower", "--data", data, "--out", run, *FAST)[0] == 0
    load_trained(run)
    path = run / "model" / "model.pt"
    saved = torch.load(path, weights_only=True)
    saved["state_dict"] = {
        k.replace("sparse_arch.", "user_tower.sparse_arch.", 1): v for k, v in saved["state_dict"].items()
    }
    torch.save(saved, path)  # the layout of an older release: a table per tower
    with pytest.raises(RecfunnelError, match=r"model\.pt: its weights do not fit .*; retrain it$"):
        load_trained(run)
    code, _, err = cli("recommend", "--run", run, "--user", "1")
    assert code != 0 and "Traceback" not in err
