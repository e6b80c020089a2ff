"""The logged pyfunc model: raw values in, the same numbers as calling the model directly."""

import json
import time
import uuid

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recfunnel.config import TrackingConfig, load_config
from recfunnel.data.format.read import read_split
from recfunnel.data.format.request_encoder import RequestEncoder
from recfunnel.data.format.vocab import Vocab
from recfunnel.data.sources.synthetic import prepare_synthetic
from recfunnel.errors import DataError
from recfunnel.store.model import build_model, save_model
from recfunnel.tracking.pyfunc import RecfunnelPyfunc, predict_frame
from recfunnel.tracking.tracker import Tracker


@pytest.fixture(scope="module")
def ctr(tmp_path_factory):
    out = tmp_path_factory.mktemp("ctr") / "data"
    prepare_synthetic(3000, out, dense=3, sparse=4, multi_hot=2, interactions=2, quiet=True)
    return out


@pytest.fixture(scope="module")
def interactions(tmp_path_factory):
    out = tmp_path_factory.mktemp("interactions") / "data"
    prepare_synthetic(3000, out, kind="interactions", quiet=True)
    return out


def saved_model(tmp_path, data, kind: str, overrides: list[str] = ()):
    """An untrained model with random, large-ish weights (so outputs differ), saved as a model folder."""
    from recfunnel.data.format.manifest import load_manifest

    config, manifest = load_config(kind, overrides=list(overrides)), load_manifest(data)
    torch.manual_seed(0)
    model = build_model(config, manifest, device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    folder = save_model(tmp_path / "run" / "model", config, manifest, model.state_dict(), data)
    return model.eval(), folder


def shard_inputs(rows, manifest) -> tuple[torch.Tensor, KeyedJaggedTensor]:
    """A split's rows as the loader would batch them."""
    lengths = [np.ones(len(rows), np.int32)] * rows.sparse.shape[1] + list(rows.mh_lengths.T)
    values = list(rows.sparse.T) + rows.mh_values
    kjt = KeyedJaggedTensor(
        keys=manifest.sparse_keys,
        values=torch.from_numpy(np.concatenate(values)),
        lengths=torch.from_numpy(np.concatenate(lengths).astype(np.int32)),
        stride=len(rows),
    )
    return torch.from_numpy(rows.dense.copy()), kjt


def log_and_load(tmp_path, folder, example: pd.DataFrame):
    """Log the folder in a new run, check where it went, and load it back as a pyfunc."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    tracker = Tracker.start(TrackingConfig(experiment=name), run_dir=tmp_path / "run")
    with tracker:
        started = time.perf_counter()
        uri = tracker.log_model(folder, register_as=name, input_example=example)
        assert time.perf_counter() - started < 5
    client = mlflow.MlflowClient(tracker.tracking_uri)
    logged = client.get_logged_model(uri.removeprefix("models:/"))
    assert logged.experiment_id == tracker.experiment_id and logged.source_run_id == tracker.run_id
    assert client.get_model_version(name, "1").source == uri
    assert json.loads((tmp_path / "run" / "mlflow.json").read_text())["model_uri"] == uri
    return mlflow.pyfunc.load_model(uri)


def test_ranker_round_trip_matches_the_model(tmp_path, ctr):
    model, folder = saved_model(tmp_path, ctr, "dlrm")
    manifest, rows = read_split(ctr, "test")
    # Raw values of the shard rows: counts (dense = log1p(count)), ids (index encoding), id lists.
    raw = {f.name: np.rint(np.expm1(rows.dense[:, j])).astype(np.int64) for j, f in enumerate(manifest.dense)}
    raw |= {f.name: rows.sparse[:, j] for j, f in enumerate(manifest.single_hot)}
    for j, f in enumerate(manifest.multi_hot):
        cuts = np.cumsum(rows.mh_lengths[:, j])[:-1]
        raw[f.name] = ["|".join(map(str, v)) for v in np.split(rows.mh_values[j], cuts)]
    df = pd.DataFrame(raw)
    loaded = log_and_load(tmp_path, folder, df.head(5))
    got = loaded.predict(df)
    with torch.no_grad():
        expected = torch.sigmoid(model(*shard_inputs(rows, manifest))[:, 0]).numpy()
    assert list(got.columns) == ["label"] and expected.std() > 0.01
    np.testing.assert_allclose(got["label"].to_numpy(), expected, rtol=1e-5, atol=1e-6)


def test_two_tower_round_trip_scores_pairs_of_raw_ids(tmp_path, interactions):
    model, folder = saved_model(tmp_path, interactions, "two-tower")
    manifest, rows = read_split(interactions, "test")
    users, items = Vocab.load(interactions / "vocab", "user_id"), Vocab.load(interactions / "vocab", "item_id")
    keys = manifest.sparse_keys
    df = pd.DataFrame(
        {
            "user_id": users.decode(rows.sparse[:, keys.index("user_id")]).astype(np.int64),
            "item_id": items.decode(rows.sparse[:, keys.index("item_id")]).astype(np.int64),
        }
    )
    loaded = log_and_load(tmp_path, folder, df.head(3))
    with torch.no_grad():
        u, i = model(*shard_inputs(rows, manifest))
    expected = (u * i).sum(dim=1).numpy()
    got = loaded.predict(df)
    assert list(got.columns) == ["score"] and expected.std() > 0.01
    np.testing.assert_allclose(got["score"].to_numpy(), expected, rtol=1e-4, atol=1e-5)
    unknown = loaded.predict(pd.DataFrame({"user_id": [df.user_id[0], -5], "item_id": [-7, df.item_id[0]]}))
    assert unknown["score"].isna().all()


def test_heads_become_columns(tmp_path, interactions):
    heads = (
        "model.heads=[{label: label}, {label: rating, kind: regression}, {label: rating, kind: multiclass, classes: 6}]"
    )
    model, folder = saved_model(tmp_path, interactions, "dcnv2", [heads])
    pyfunc = RecfunnelPyfunc()
    pyfunc._load(str(folder))
    items = pd.read_parquet(interactions / "items.parquet")
    users = pd.read_parquet(interactions / "users.parquet")
    df = pd.concat([users.head(4).reset_index(drop=True), items.head(4).reset_index(drop=True)], axis=1)
    for name in ("segment", "category"):  # the tables hold indices: decode them back to raw values
        df[name] = Vocab.load(interactions / "vocab", name).decode(df[name].to_numpy())
    tags = Vocab.load(interactions / "vocab", "tags")
    df["tags"] = [list(tags.decode(np.asarray(v, np.int64))) for v in df["tags"]]
    df["popularity"] = np.nan  # missing dense value -> 0
    got = predict_frame(pyfunc, df)
    assert list(got.columns) == ["label", "rating", "rating_multiclass"] + [
        f"rating_multiclass_prob_{k}" for k in range(6)
    ]
    dense, kjt = RequestEncoder(pyfunc.trained.manifest, folder).encode(df)
    with torch.no_grad():
        logits = model(dense, kjt)
    np.testing.assert_allclose(got["label"], torch.sigmoid(logits[:, 0]).numpy(), rtol=1e-5)
    np.testing.assert_allclose(got["rating"], logits[:, 1].numpy(), rtol=1e-5)
    probs = torch.softmax(logits[:, 2:8], dim=1).numpy()
    np.testing.assert_allclose(got[[f"rating_multiclass_prob_{k}" for k in range(6)]].to_numpy(), probs, rtol=1e-5)
    assert got["rating_multiclass"].tolist() == probs.argmax(axis=1).tolist()
    with pytest.raises(DataError, match="'segment'"):
        predict_frame(pyfunc, df.drop(columns=["segment"]))
