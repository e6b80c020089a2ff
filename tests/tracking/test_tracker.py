"""Tracker: params, metrics, figures and artifacts read back with MlflowClient; the fallback store."""

import hashlib
import json
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from recfunnel.config import TrackingConfig, load_config
from recfunnel.tracking.tracker import Tracker, _default_uri, file_sha256, metric_name, package_versions
from recfunnel.train.plots import training_curves


def start(tmp_path, **kwargs) -> Tracker:
    """A run in a fresh experiment of the test store (conftest's MLFLOW_TRACKING_URI)."""
    return Tracker.start(
        TrackingConfig(experiment=f"test-{uuid.uuid4().hex[:8]}", run_name="t"), run_dir=tmp_path / "run", **kwargs
    )


def test_params_metrics_tags_and_artifacts_read_back(tmp_path):
    config = load_config("dlrm")
    with start(tmp_path) as tracker:
        tracker.log_params({**config.to_dict(), "long": "x" * 7000})
        tracker.log_metrics({"train_loss": 0.5, "recall@100": 0.25, "bad": float("nan"), "inf": float("inf")}, step=3)
        tracker.log_metrics({"train_loss": 0.4}, step=4)
        tracker.set_tags(package_versions())
        tracker.log_figure(
            training_curves([{"step": 1, "epoch": 0.1, "train_loss": 0.5}, {"epoch": 1, "split": "val", "auc": 0.7}]),
            "plots/curves",
        )
        (tmp_path / "note.txt").write_text("hello")
        tracker.log_artifact(tmp_path / "note.txt", "notes")
    client = MlflowClient(tracker.tracking_uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "t"
    assert run.data.params["train.batch_size"] == str(config.train.batch_size)
    assert run.data.params["model.top_mlp"] == str(config.model.top_mlp)  # lists kept whole, as text
    assert run.data.params["long"] == "x" * 6000
    assert run.data.metrics == {"train_loss": 0.4, "recall_at_100": 0.25}  # NaN / inf dropped
    assert [(m.step, m.value) for m in client.get_metric_history(tracker.run_id, "train_loss")] == [(3, 0.5), (4, 0.4)]
    assert run.data.tags["torch"] == package_versions()["torch"]
    artifacts = {a.path for folder in ("plots", "notes") for a in client.list_artifacts(tracker.run_id, folder)}
    assert artifacts == {"plots/curves.png", "notes/note.txt"}
    png = client.download_artifacts(tracker.run_id, "plots/curves.png", str(tmp_path))
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((tmp_path / "run" / "mlflow.json").read_text())
    assert record == {
        "run_id": tracker.run_id,
        "tracking_uri": tracker.tracking_uri,
        "experiment_id": tracker.experiment_id,
        "model_uri": None,
    }
    assert not tracker.fell_back


def test_exception_ends_the_run_failed(tmp_path):
    with pytest.raises(RuntimeError):
        with start(tmp_path) as tracker:
            raise RuntimeError("boom")
    assert MlflowClient(tracker.tracking_uri).get_run(tracker.run_id).info.status == "FAILED"
    tracker.end("FINISHED")  # a second end does nothing
    assert MlflowClient(tracker.tracking_uri).get_run(tracker.run_id).info.status == "FAILED"


def test_unreachable_server_falls_back_to_the_run_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: nothing listens
    with start(tmp_path) as tracker:
        tracker.log_metrics({"auc": 0.75})
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "http://127.0.0.1:9" in lines[0] and "mlflow ui --backend-store-uri" in lines[0]
    db = (tmp_path / "run" / "mlruns.db").resolve()
    assert tracker.fell_back and tracker.tracking_uri == f"sqlite:///{db}" and db.is_file()
    assert MlflowClient(tracker.tracking_uri).get_run(tracker.run_id).data.metrics == {"auc": 0.75}
    assert json.loads((tmp_path / "run" / "mlflow.json").read_text())["tracking_uri"] == tracker.tracking_uri
    again = start(tmp_path, quiet=True)  # --quiet: the fallback is only recorded in mlflow.json
    again.end()
    assert capsys.readouterr().err == "" and again.fell_back and again.tracking_uri == tracker.tracking_uri


def test_default_store_is_sqlite_in_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    assert _default_uri() == f"sqlite:///{tmp_path}/mlflow.db"


def test_disabled_tracker_does_nothing(tmp_path):
    tracker = start(tmp_path, enabled=False)
    with tracker:
        tracker.log_params({"a": 1})
        tracker.log_metrics({"b": 2.0}, step=1)
        tracker.set_tags({"c": "d"})
        assert tracker.log_model(tmp_path) is None
    assert tracker.run_id is None and not (tmp_path / "run").exists()


def test_metric_names_are_made_mlflow_safe():
    assert metric_name("recall@100") == "recall_at_100"
    assert metric_name("val/ndcg@10") == "val/ndcg_at_10"
    assert metric_name("val loss: train-1.5") == "val loss: train-1.5"  # MLflow allows these
    assert metric_name("loss (train)") == "loss _train_"
    assert metric_name("a*b?") == "a_b_"


def test_non_numbers_are_refused(tmp_path):
    with start(tmp_path) as tracker:
        with pytest.raises(ValueError, match="'auc'"):
            tracker.log_metrics({"auc": "high"})


def test_helpers(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc" * 1000)
    assert file_sha256(path) == hashlib.sha256(b"abc" * 1000).hexdigest()
    versions = package_versions()
    assert set(versions) == {
        "torch",
        "torchrec",
        "fbgemm_gpu",
        "mosaicml-streaming",
        "mlflow",
        "numpy",
        "pandas",
        "python",
    }
    assert versions["mlflow"].startswith("3.")
