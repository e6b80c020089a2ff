"""Sampled negatives for rankers: each row followed by copies with another item, labelled 0."""

import numpy as np
import pytest
import torch

from recfunnel.data.format.catalog import Catalog
from recfunnel.data.format.manifest import load_manifest
from recfunnel.data.stream.loader import StreamingBatchLoader
from recfunnel.errors import ConfigError
from recfunnel.train.negatives import NegativeSampler


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from recfunnel.cli import main

    out = tmp_path_factory.mktemp("neg") / "data"
    assert main(["prepare", "synthetic", "--kind", "interactions", "--rows", "3000", "--out", str(out), "--quiet"]) == 0
    return out


@pytest.mark.parametrize("by", ["uniform", "popularity"])
def test_each_row_is_followed_by_negatives_with_catalogue_items(data, by):
    manifest = load_manifest(data)
    sampler = NegativeSampler(manifest, data, per_row=3, seed=0, by=by)
    with StreamingBatchLoader(data, "train", batch_size=50, shuffle=False) as loader:
        batch = next(iter(loader))
    out = sampler(batch)
    n = len(batch)
    assert len(out) == 4 * n and out.sparse.stride() == 4 * n
    assert torch.equal(out.labels[:n], batch.labels) and (out.labels[n:] == 0).all()
    assert torch.equal(out.weights[n:], batch.weights.repeat_interleave(3))
    source = torch.arange(n).repeat_interleave(3)
    user = out.sparse["user_id"].values()
    assert torch.equal(user[n:], batch.sparse["user_id"].values()[source])  # the row's user
    items = Catalog.load(data, manifest, "item")
    drawn = out.sparse["item_id"].values()[n:].numpy()
    rows = items.positions_of(drawn)
    assert (rows >= 0).all() and len(set(drawn.tolist())) > 10
    assert np.array_equal(out.sparse["category"].values()[n:].numpy(), items.single["category"][rows])
    tags = out.sparse["tags"]
    assert tags.lengths()[n:].tolist() == items.multi["tags"][0][rows].tolist()
    j = [f.name for f in manifest.dense].index("popularity")
    assert np.allclose(out.dense[n:, j].numpy(), items.dense["popularity"][rows])


def test_evaluation_negatives_are_the_same_each_time(data):
    sampler = NegativeSampler(load_manifest(data), data, per_row=2, seed=0)
    with StreamingBatchLoader(data, "val", batch_size=40, shuffle=False) as loader:
        batch = next(iter(loader))
    first = sampler(batch, sampler.eval_generator("val")).sparse["item_id"].values()
    again = sampler(batch, sampler.eval_generator("val")).sparse["item_id"].values()
    assert torch.equal(first, again) and not torch.equal(first, sampler(batch).sparse["item_id"].values())


def test_only_interaction_data_and_binary_heads_take_negatives(cli, data, tmp_path):
    code, _, err = cli(
        "train",
        "--model",
        "dlrm",
        "--data",
        data,
        "--out",
        tmp_path / "r",
        "--quiet",
        "--set",
        "train.sampled_negatives=2",
        "--set",
        "model.heads=[{label: label}, {label: rating, kind: regression}]",
    )
    assert code != 0 and "only binary heads can take sampled negatives" in err
    code, _, err = cli(
        "train",
        "--model",
        "two-tower",
        "--data",
        data,
        "--out",
        tmp_path / "r",
        "--quiet",
        "--set",
        "train.sampled_negatives=2",
    )
    assert code != 0 and "a two-tower model samples its own" in err
    with pytest.raises(ConfigError, match="train.negative_sampling: expected uniform or popularity"):
        from recfunnel.config import load_config

        load_config("dlrm", overrides=["train.negative_sampling=hard"])
