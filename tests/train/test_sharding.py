"""Sharding plans: the planner's, or the one a config forces, shown as a table."""

import pytest

from recfunnel.config import load_config
from recfunnel.errors import ConfigError
from recfunnel.store.model import build_model
from recfunnel.train.sharding import forced_plan, plan_rows
from tests.models.test_parts import manifest


def tables_of(model):
    from recfunnel.train.distributed import embedding_collections

    return {
        c.name: (c.num_embeddings, c.embedding_dim)
        for m in embedding_collections(model)
        for c in m.embedding_bag_configs()
    }


def test_a_config_forces_each_tables_sharding_and_spreads_the_rest():
    config = load_config(
        "dlrm", overrides=["sharding.tables=[{table: item_id, type: row_wise}, {table: city, type: data_parallel}]"]
    )
    model = build_model(config, manifest(), device="meta")
    plan = forced_plan(model, config.sharding, world_size=2, local_size=2, device_type="cpu")
    rows = {r[0]: r for r in plan_rows(plan, tables_of(model))}
    assert rows["item_id"][3] == "row_wise" and rows["item_id"][4] == "fused" and rows["item_id"][5] == "0,1"
    assert rows["city"][3] == "data_parallel"
    assert {rows[n][3] for n in ("user_id", "genres")} == {"table_wise"}
    assert {rows[n][5] for n in ("user_id", "genres")} == {"0", "1"}  # round-robin over the ranks
    assert rows["item_id"][1:3] == [7, 32]


def test_unknown_tables_and_types_are_named():
    config = load_config("dlrm", overrides=["sharding.tables=[{table: itemid, type: row_wise}]"])
    model = build_model(config, manifest(), device="meta")
    with pytest.raises(ConfigError, match="sharding.tables\\[0\\].table: no embedding table 'itemid'"):
        forced_plan(model, config.sharding, world_size=2, local_size=2, device_type="cpu")
    with pytest.raises(ConfigError, match="sharding.tables\\[0\\].type: expected one of"):
        load_config("dlrm", overrides=["sharding.tables=[{table: item_id, type: diagonal}]"])
