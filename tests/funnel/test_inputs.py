"""The models' inputs built online (the funnel, from the catalogues) equal those built offline (the
shards `prepare` wrote) for the same user at the same moment: history included."""

import numpy as np
import pytest

from recfunnel.data.format.catalog import Catalog
from recfunnel.data.format.manifest import load_manifest
from recfunnel.data.format.request_encoder import RequestEncoder
from recfunnel.data.format.vocab import Vocab
from recfunnel.data.sources.synthetic_interactions import prepare_synthetic_interactions
from recfunnel.funnel.inputs import pair_inputs, tower_inputs, user_from_catalog, user_from_raw
from tests.data.readback import read_split


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Each user's last row held out, no val: a test row comes right after all of its user's
    training rows, the moment a served user is at."""
    out = tmp_path_factory.mktemp("inputs") / "data"
    prepare_synthetic_interactions(3000, out, users=60, items=80, val_fraction=0, history=8, quiet=True)
    manifest = load_manifest(out)
    _, rows = read_split(out, "test", manifest)
    return out, manifest, rows


def _row_features(manifest, rows, r):
    """Row ``r`` of the shards: sparse key -> ids, dense name -> value."""
    out = {key: [int(rows.sparse[r, j])] for j, key in enumerate(manifest.sparse_keys[: rows.sparse.shape[1]])}
    for j, feature in enumerate(manifest.multi_hot):
        start = int(rows.mh_lengths[:r, j].sum())
        out[feature.name] = rows.mh_values[j][start : start + int(rows.mh_lengths[r, j])].tolist()
    dense = {f.name: float(rows.dense[r, j]) for j, f in enumerate(manifest.dense)}
    return out, dense


def _kjt_rows(kjt):
    return {key: [v.tolist() for v in kjt[key].to_dense()] for key in kjt.keys()}


def test_ranker_and_user_tower_inputs_online_equal_the_test_rows_offline(data):
    out, manifest, rows = data
    users, items = Catalog.load(out, manifest, "user"), Catalog.load(out, manifest, "item")
    assert manifest.roles["history"] == "history" and rows.mh_lengths.shape[0] == len(rows) > 50
    user_col, item_col = manifest.sparse_keys.index("user_id"), manifest.sparse_keys.index("item_id")
    checked_history = 0
    for r in range(len(rows)):
        offline, offline_dense = _row_features(manifest, rows, r)
        user = user_from_catalog(users, int(users.positions_of(np.array([rows.sparse[r, user_col]]))[0]))
        item_row = items.positions_of(np.array([rows.sparse[r, item_col]]))
        dense, kjt = pair_inputs(manifest, [user], items, [item_row])
        online = {key: ids[0] for key, ids in _kjt_rows(kjt).items()}
        assert online == offline, r
        assert dense[0].tolist() == pytest.approx([offline_dense[f.name] for f in manifest.dense])
        tower = [name for name in manifest.roles["user_features"] if name in offline]
        tower_dense = [name for name in manifest.roles["user_features"] if name in offline_dense]
        assert tower_dense == ["example_age"]  # as of now, online and in the test rows alike
        user_dense, user_kjt = tower_inputs([user], manifest.roles["user"], ["user_id", *tower], tower_dense)
        assert {k: v[0] for k, v in _kjt_rows(user_kjt).items()} == {k: offline[k] for k in ["user_id", *tower]}
        assert user_dense[0].tolist() == pytest.approx([offline_dense[name] for name in tower_dense])
        checked_history += len(offline["history"]) > 0
    assert checked_history > 50


def test_a_history_sent_in_a_request_encodes_like_the_shards(data):
    out, manifest, rows = data
    encoder = RequestEncoder(manifest, out)
    r = int(np.argmax(rows.mh_lengths[:, [f.name for f in manifest.multi_hot].index("history")]))
    offline, _ = _row_features(manifest, rows, r)
    raw = Vocab.load(out / "vocab", "item_id").decode(np.array(offline["history"]))  # raw ids, as a client has them
    user, notes = user_from_raw(manifest, encoder, {"history": list(raw)})
    assert len(offline["history"]) == 8 and user.sparse["history"].tolist() == offline["history"] and notes == []


@pytest.fixture(scope="module")
def data_with_val(tmp_path_factory):
    """Each user's last row to test and the one before to val: the test row's history holds the
    val row, the val row's does not."""
    out = tmp_path_factory.mktemp("inputs-val") / "data"
    prepare_synthetic_interactions(3000, out, users=60, items=80, history=8, quiet=True)
    return out, load_manifest(out)


@pytest.mark.parametrize("split", ["val", "test"])
def test_the_catalogue_as_of_a_split_gives_that_splits_rows_their_history(data_with_val, split):
    out, manifest = data_with_val
    _, rows = read_split(out, split, manifest)
    users = Catalog.load(out, manifest, "user", as_of=split)
    user_col, j = manifest.sparse_keys.index("user_id"), [f.name for f in manifest.multi_hot].index("history")
    assert len(rows) == 60
    for r in range(len(rows)):
        offline, _ = _row_features(manifest, rows, r)
        user = user_from_catalog(users, int(users.positions_of(np.array([rows.sparse[r, user_col]]))[0]))
        assert user.sparse["history"].tolist() == offline["history"], r
    if split == "test":  # the latest item of a test row's history is its user's val item
        _, val = read_split(out, "val", manifest)
        val_item = dict(zip(val.sparse[:, user_col].tolist(), val.sparse[:, manifest.sparse_keys.index("item_id")]))
        starts = np.r_[0, np.cumsum(rows.mh_lengths[:, j])]
        latest = [int(rows.mh_values[j][starts[r]]) for r in range(len(rows))]
        assert latest == [int(val_item[u]) for u in rows.sparse[:, user_col].tolist()]
