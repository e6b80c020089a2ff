"""Checkpoints on one process: what is saved comes back exactly, `latest` only ever names a complete
checkpoint, and a checkpoint that does not fit is refused in one line. (Across processes and
SIGKILL: test_scale_out.py.)"""

import shutil

import pytest
import torch

from recfunnel.config import load_config
from recfunnel.store.model import build_model
from recfunnel.train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from recfunnel.train.distributed import init_embeddings, init_world, wrap
from recfunnel.train.loop import full_state_dict
from recfunnel.train.sharding import forced_plan
from tests.models.test_parts import batch, manifest


def wrapped(overrides=(), sharding=None, seed=0):
    config = load_config(
        "dlrm",
        overrides=list(overrides) + ([f"sharding.tables=[{{table: '*', type: {sharding}}}]"] if sharding else []),
    )
    world = init_world()
    torch.manual_seed(seed)
    model = build_model(config, manifest(), device="meta")
    plan = forced_plan(model, config.sharding, 1, 1, "cpu") if sharding else None
    dmp, optimizer, _ = wrap(model, world, config.train.embedding_optimizer, config.train.dense_optimizer, plan=plan)
    init_embeddings(dmp, seed)
    return dmp, optimizer, world


def train_steps(dmp, optimizer, steps=3, seed=1):
    torch.manual_seed(seed)
    for _ in range(steps):
        dense, kjt = batch()
        loss = dmp(dense, kjt).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_embedding_init_does_not_depend_on_the_sharding():
    rows = [full_state_dict(wrapped(sharding=kind)[0]) for kind in ("table_wise", "row_wise", "column_wise")]
    tables = [k for k in rows[0] if ".embedding_bags." in k]
    assert tables and all(torch.equal(rows[0][k], other[k]) for other in rows[1:] for k in tables)
    other_seed = full_state_dict(wrapped(seed=1)[0])
    assert not torch.equal(rows[0][tables[0]], other_seed[tables[0]])


def test_a_checkpoint_restores_weights_and_optimizer_state_exactly(tmp_path):
    dmp, optimizer, world = wrapped()
    train_steps(dmp, optimizer)
    saved = save_checkpoint(tmp_path, dmp, optimizer, {"step": 3, "note": "x"}, world)
    weights = full_state_dict(dmp)
    adam = {k: v["exp_avg"].clone() for k, v in optimizer.state_dict()["state"].items() if "exp_avg" in v}

    fresh, fresh_opt, _ = wrapped(seed=5)
    trainer = load_checkpoint(saved, fresh, fresh_opt, world)
    assert trainer["step"] == 3 and trainer["note"] == "x"
    got = full_state_dict(fresh)
    assert all(torch.equal(weights[k], got[k]) for k in weights)
    got_adam = {k: v["exp_avg"] for k, v in fresh_opt.state_dict()["state"].items() if "exp_avg" in v}
    assert adam and all(torch.equal(adam[k], got_adam[k]) for k in adam)
    # ... and both go on identically (the fused embedding optimizer's accumulators came back too)
    train_steps(dmp, optimizer, 2)
    train_steps(fresh, fresh_opt, 2)
    after, fresh_after = full_state_dict(dmp), full_state_dict(fresh)
    assert all(torch.equal(after[k], fresh_after[k]) for k in after)


def test_latest_names_only_complete_checkpoints_and_old_ones_are_pruned(tmp_path):
    dmp, optimizer, world = wrapped()
    assert latest_checkpoint(tmp_path) is None
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, dmp, optimizer, {"step": step}, world, keep=2)
    assert latest_checkpoint(tmp_path).name == "step-000000003"
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-000000002", "step-000000003"]
    # A write killed half-way leaves a hidden temporary folder; `latest` still names step 3.
    shutil.copytree(tmp_path / "step-000000003", tmp_path / ".step-000000004.tmp")
    assert latest_checkpoint(tmp_path).name == "step-000000003"


def test_a_checkpoint_of_another_model_is_refused_in_one_line(tmp_path):
    dmp, optimizer, world = wrapped()
    saved = save_checkpoint(tmp_path, dmp, optimizer, {"step": 1}, world)
    other, other_opt, _ = wrapped(overrides=["model.embedding_dim=8"])
    with pytest.raises(CheckpointError, match="does not fit this model and sharding") as err:
        load_checkpoint(saved, other, other_opt, world)
    assert "\n" not in str(err.value)
