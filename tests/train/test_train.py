"""`recfunnel train`, `evaluate` and `export-embeddings` end to end on tiny generated data."""

import json
import math

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from recfunnel.store.model import load_trained
from recfunnel.train.run import read_status

FAST = ["--set", "train.epochs=2", "--set", "train.batch_size=256", "--set", "train.log_every=5"]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    from recfunnel.cli import main

    root = tmp_path_factory.mktemp("data")
    assert (
        main(
            [
                "prepare",
                "synthetic",
                "--kind",
                "interactions",
                "--rows",
                "6000",
                "--out",
                str(root / "pairs"),
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "prepare",
                "synthetic",
                "--rows",
                "8000",
                "--sparse",
                "4",
                "--multi-hot",
                "1",
                "--dense",
                "3",
                "--interactions",
                "2",
                "--out",
                str(root / "ctr"),
                "--quiet",
            ]
        )
        == 0
    )
    return root


@pytest.fixture(scope="module")
def two_tower_run(datasets, tmp_path_factory):
    from recfunnel.cli import main

    run = tmp_path_factory.mktemp("runs") / "tt"
    assert (
        main(
            [
                "train",
                "--model",
                "two-tower",
                "--data",
                str(datasets / "pairs"),
                "--out",
                str(run),
                *FAST,
                "--set",
                "tracking.register_as=tiny-two-tower",
            ]
        )
        == 0
    )
    return run


@pytest.fixture(scope="module")
def dlrm_run(datasets, tmp_path_factory):
    from recfunnel.cli import main

    run = tmp_path_factory.mktemp("runs") / "dlrm"
    assert main(["train", "--model", "dlrm", "--data", str(datasets / "ctr"), "--out", str(run), *FAST]) == 0
    return run


def test_two_tower_run_has_metrics_beside_baselines(two_tower_run):
    metrics = json.loads((two_tower_run / "metrics.json").read_text())
    for split in ("val", "test"):
        assert 0 <= metrics[split]["recall_at_100"] <= 1
        assert set(metrics["baselines"]) == {"most_popular", "ease"}
        assert "recall_at_20" in metrics["baselines"]["ease"][split]
    assert "accuracy_at_100_no_exclusion" in metrics["test"]
    assert metrics["train"]["samples_per_s"] > 0
    assert (two_tower_run / "model" / "model.pt").is_file()
    assert (two_tower_run / "checkpoints" / "best.pt").is_file()
    assert (two_tower_run / "plots" / "training_curves.png").is_file()


def test_the_saved_model_reproduces_the_reported_test_metrics(two_tower_run, datasets):
    from recfunnel.train.objectives import RetrievalObjective

    trained = load_trained(two_tower_run)
    objective = RetrievalObjective(trained.config, trained.manifest, str(datasets / "pairs"), trained.model)
    again = objective.evaluate(trained.model, "test", torch.device("cpu"))
    reported = json.loads((two_tower_run / "metrics.json").read_text())["test"]
    assert again["recall_at_20"] == pytest.approx(reported["recall_at_20"])


def test_run_is_in_mlflow_with_params_curves_and_a_model_that_scores(two_tower_run):
    info = json.loads((two_tower_run / "mlflow.json").read_text())
    client = mlflow.MlflowClient(info["tracking_uri"])
    run = client.get_run(info["run_id"])
    assert run.data.params["train.epochs"] == "2"
    assert "test_recall_at_100" in run.data.metrics
    assert len(client.get_metric_history(info["run_id"], "train_loss")) >= 2
    artifacts = {a.path for a in client.list_artifacts(info["run_id"], "plots")}
    assert "plots/training_curves.png" in artifacts
    mlflow.set_tracking_uri(info["tracking_uri"])
    model = mlflow.pyfunc.load_model("models:/tiny-two-tower/latest")
    users = pd.read_parquet(two_tower_run / "model" / "users.parquet")["user_id"][:3]
    items = pd.read_parquet(two_tower_run / "model" / "items.parquet")["item_id"][:3]
    scores = model.predict(pd.DataFrame({"user_id": users.to_numpy(), "item_id": items.to_numpy()}))
    assert np.isfinite(np.asarray(scores["score"])).all()


def test_export_embeddings_writes_raw_ids_and_float32_lists(cli, two_tower_run, tmp_path):
    code, out, err = cli("export-embeddings", "--run", two_tower_run, "--out", tmp_path / "emb")
    assert code == 0, err
    users = pd.read_parquet(tmp_path / "emb" / "users.parquet")
    items = pd.read_parquet(tmp_path / "emb" / "items.parquet")
    catalogue = pd.read_parquet(two_tower_run / "model" / "items.parquet")
    assert list(items["item_id"]) == list(catalogue["item_id"])
    assert list(users.columns) == ["user_id", "embedding"]
    dims = {len(v) for v in items["embedding"]}
    assert dims == {64} and items["embedding"][0].dtype == np.float32


def test_evaluate_json_is_one_object_with_test_and_baselines(cli, dlrm_run):
    code, out, err = cli("evaluate", "--run", dlrm_run, "--json")
    assert code == 0, err
    metrics = json.loads(out)
    assert 0.5 < metrics["test"]["auc"] <= 1
    assert "auc" in metrics["baselines"]["logistic_regression"]["test"]
    code, out, _ = cli("evaluate", "--run", dlrm_run)
    assert "logistic-regression" in out and "test split" in out


def test_dlrm_pyfunc_scores_a_dataframe_like_the_model(dlrm_run, datasets):
    info = json.loads((dlrm_run / "mlflow.json").read_text())
    mlflow.set_tracking_uri(info["tracking_uri"])
    model = mlflow.pyfunc.load_model(info["model_uri"])
    trained = load_trained(dlrm_run)
    manifest = trained.manifest
    frame = pd.DataFrame({f.name: [0.5, 2.0] for f in manifest.dense})
    for f in manifest.single_hot:
        frame[f.name] = [1, 2]
    for f in manifest.multi_hot:
        frame[f.name] = [[1, 2], [3]]
    out = model.predict(frame)
    probs = np.asarray(out["label"], dtype=float)
    assert probs.shape == (2,) and ((probs > 0) & (probs < 1)).all()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "two-tower", "--data", "{ctr}"], "two-tower needs a user-item interactions dataset"),
        (
            ["--model", "dlrm", "--data", "{ctr}", "--set", "model.features=[cat_0, nope]"],
            "model.features: no feature 'nope' in the dataset",
        ),
        (
            ["--model", "dlrm", "--data", "{ctr}", "--set", "model.heads=[{label: clicked}]"],
            "model.heads[0].label: no label 'clicked'",
        ),
        (["--model", "dlrm", "--data", "{ctr}", "--set", "train.batch_size=-3"], "train.batch_size: expected"),
        (["--model", "dlrm", "--data", "{missing}"], "no manifest"),
    ],
)
def test_mismatches_fail_before_training_with_one_line(cli, datasets, tmp_path, args, message):
    args = [a.replace("{ctr}", str(datasets / "ctr")).replace("{missing}", str(tmp_path / "nothing")) for a in args]
    code, out, err = cli("train", *args, "--out", tmp_path / "run")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "run").exists()


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(datasets, tmp_path, monkeypatch):
    from recfunnel.train import objectives
    from recfunnel.train.loop import TrainingError
    from recfunnel.train.run import train

    real = objectives.RankingObjective.loss
    calls = {"n": 0}

    def poisoned(self, model, batch):  # the real loss, made NaN from the 30th step on
        losses = real(self, model, batch)
        calls["n"] += 1
        if calls["n"] >= 30:
            losses["loss"] = losses["loss"] * math.nan
        return losses

    monkeypatch.setattr(objectives.RankingObjective, "loss", poisoned)
    with pytest.raises(TrainingError, match="loss became nan at epoch 2") as err:
        train("dlrm", datasets / "ctr", tmp_path / "run", overrides=["train.batch_size=256"], quiet=True)
    latest = (tmp_path / "run" / "checkpoints" / "latest").read_text().strip()
    assert f"checkpoints/{latest} (resume with --resume)" in str(err.value)
    trainer = torch.load(tmp_path / "run" / "checkpoints" / latest / "trainer.pt", weights_only=True)
    assert trainer["progress"]["epoch"] == 2 and trainer["step"] < calls["n"]  # written at the end of epoch 1
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == 1 and all(torch.isfinite(v).all() for v in best["state_dict"].values())
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_multi_task_ranker_reports_every_head(cli, datasets, tmp_path):
    run = tmp_path / "mt"
    code, out, err = cli(
        "train",
        "--model",
        "deepfm",
        "--data",
        datasets / "pairs",
        "--out",
        run,
        *FAST,
        "--quiet",
        "--set",
        "model.heads=[{label: label}, {label: rating, kind: regression, weight: 0.1}]",
    )
    assert code == 0, err
    test = json.loads((run / "metrics.json").read_text())["test"]
    assert 0 <= test["label_auc"] <= 1 and test["rating_rmse"] > 0
    assert test["loss"] == pytest.approx(test["label_loss"] + 0.1 * test["rating_loss"], rel=1e-4)


def test_evaluate_on_data_recomputes_and_refuses_a_mismatched_dataset(cli, dlrm_run, datasets, tmp_path):
    code, out, err = cli("evaluate", "--run", dlrm_run, "--data", datasets / "ctr", "--json")
    assert code == 0, err
    again = json.loads(out)["test"]
    reported = json.loads((dlrm_run / "metrics.json").read_text())["test"]
    assert again["auc"] == pytest.approx(reported["auc"], abs=1e-6)
    other = tmp_path / "other"
    assert (
        cli(
            "prepare",
            "synthetic",
            "--rows",
            "3000",
            "--sparse",
            "4",
            "--multi-hot",
            "1",
            "--dense",
            "3",
            "--interactions",
            "2",
            "--cardinality",
            "50",
            "--out",
            other,
            "--quiet",
        )[0]
        == 0
    )
    code, out, err = cli("evaluate", "--run", dlrm_run, "--data", other)
    assert code == 2 and "has cardinality 50" in err and "the model's table has" in err, err


@pytest.mark.slow
def test_two_tower_beats_most_popular_clearly_on_movielens(cli, tmp_path):
    """The TensorFlow Recommenders protocol; the full default run's figures are in `bench quality`."""
    data, run = tmp_path / "ml", tmp_path / "run"
    assert (
        cli(
            "prepare",
            "movielens",
            "--variant",
            "ml-100k",
            "--label",
            "all",
            "--val-fraction",
            "0",
            "--test-fraction",
            "0.2",
            "--out",
            data,
            "--quiet",
        )[0]
        == 0
    )
    code, out, err = cli(
        "train", "--model", "two-tower", "--data", data, "--out", run, "--quiet", "--set", "train.epochs=3"
    )
    assert code == 0, err
    metrics = json.loads((run / "metrics.json").read_text())
    popular = metrics["baselines"]["most_popular"]["test"]["accuracy_at_100"]
    assert metrics["test"]["accuracy_at_100"] > popular + 0.1
    assert metrics["test"]["accuracy_at_100_no_exclusion"] > metrics["test"]["accuracy_at_10_no_exclusion"]


def test_saved_model_reproduces_the_validation_score_that_chose_it(dlrm_run, two_tower_run):
    for run, metric in ((dlrm_run, "auc"), (two_tower_run, "recall_at_100")):
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["early_stopping"]["metric"] == metric
        assert metrics["val"][metric] == pytest.approx(metrics["early_stopping"]["best_value"], abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("sharding", [None, "[{table: cat_3, type: row_wise}, {table: cat_1, type: column_wise}]"])
def test_two_process_run_saves_a_model_equal_to_its_sharded_self(datasets, tmp_path, sharding):
    """Under torchrun the tables are sharded over both ranks, which hand back pooled features
    grouped by rank; the unsharded model must still score exactly as the sharded one did."""
    import subprocess
    import sys

    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "recfunnel.cli",
        "train",
        "--model",
        "dlrm",
        "--data",
        str(datasets / "ctr"),
        "--out",
        str(run),
        "--quiet",
        *FAST,
        "--launcher",
        "torchrun",
        "--nproc",
        "2",
    ]
    if sharding:
        cmd += ["--set", f"sharding.tables={sharding}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["world_size"] == 2
    assert metrics["val"]["auc"] == pytest.approx(metrics["early_stopping"]["best_value"], abs=1e-5)
    assert "auc" in metrics["baselines"]["logistic_regression"]["test"]
    plan = (run / "sharding_plan.txt").read_text()
    if sharding:
        assert " row_wise " in plan and " column_wise " in plan


def test_launcher_options_are_dropped_from_the_command_each_process_runs():
    from recfunnel.train.launch import without_launcher

    argv = ["train", "--model", "dlrm", "--launcher", "torchrun", "--nproc=4", "--set", "train.epochs=1"]
    assert without_launcher(argv) == ["train", "--model", "dlrm", "--set", "train.epochs=1"]


def test_resume_mistakes_are_one_line_errors(cli, datasets, dlrm_run, tmp_path):
    data = datasets / "ctr"
    code, _, err = cli("train", "--model", "dlrm", "--data", data, "--out", dlrm_run, "--resume", "--config", "x.yaml")
    assert code != 0 and "--config cannot be combined with --resume" in err
    started = tmp_path / "started"
    started.mkdir()
    (started / "config.yaml").write_text((dlrm_run / "config.yaml").read_text())
    code, _, err = cli("train", "--model", "dcnv2", "--data", data, "--out", started, "--resume")
    assert code != 0 and "trained 'dlrm', not 'dcnv2'" in err and len(err.strip().splitlines()) == 1


def test_rerunning_the_same_resume_command_always_works(cli, datasets, dlrm_run, tmp_path):
    """What a job scheduler does after a preemption: run the same command again."""
    data, quick = datasets / "ctr", ["--set", "train.max_steps=3", "--set", "eval.baselines=false"]
    before = (dlrm_run / "metrics.json").read_text()
    code, _, err = cli("train", "--model", "dlrm", "--data", data, "--out", dlrm_run, "--resume")
    assert code == 0 and "the run has finished; nothing to resume" in err
    assert (dlrm_run / "metrics.json").read_text() == before and read_status(dlrm_run)["state"] == "finished"
    # killed before its first checkpoint (only config.yaml written): it starts again from the beginning
    started = tmp_path / "started"
    started.mkdir()
    (started / "config.yaml").write_text((dlrm_run / "config.yaml").read_text())
    code, _, err = cli("train", "--model", "dlrm", "--data", data, "--out", started, "--resume", *quick)
    assert code == 0 and "no complete checkpoint yet; starting the run again" in err
    assert (started / "metrics.json").is_file() and read_status(started)["state"] == "finished"
    # killed before it wrote anything: the same
    code, _, err = cli("train", "--model", "dlrm", "--data", data, "--out", tmp_path / "none", "--resume", *quick)
    assert code == 0 and "no run to resume; starting it" in err and (tmp_path / "none" / "metrics.json").is_file()


def test_a_corrupt_shard_fails_the_run_with_exit_3_and_leaves_nothing(cli, datasets, tmp_path):
    import os
    import shutil

    data = tmp_path / "ctr"
    shutil.copytree(datasets / "ctr", data)
    shard = sorted((data / "train").glob("shard.*.mds"))[0]
    raw = bytearray(shard.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 16] = bytes(b ^ 0xFF for b in raw[middle : middle + 16])
    shard.write_bytes(bytes(raw))  # same size: `validate --fast` would not see it
    run = tmp_path / "run"
    code, _, err = cli("train", "--model", "dlrm", "--data", data, "--out", run, "--quiet", *FAST)
    lines = [line for line in err.splitlines() if line.startswith("recfunnel:")]
    assert code == 3 and len(lines) == 1 and str(shard) in lines[0] and "train block" in lines[0], err
    assert "Traceback" not in err and not run.exists()
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], f"tags.`recfunnel.run_dir` = '{run}'"
    )
    assert [r.info.status for r in runs] == ["FAILED"]
