"""MLflow tracking of one training run: params, metrics, figures, artifacts and the model.

    with Tracker.start(config.tracking, run_dir=run_dir, enabled=rank == 0) as tracker:
        tracker.log_params(config.to_dict())
        tracker.log_metrics({"train_loss": 0.41, "recall@100": 0.2}, step=50)   # -> recall_at_100
        tracker.log_model(run_dir / "model", register_as=config.tracking.register_as)

The store is ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<cwd>/mlflow.db``. A store that does
not answer within a few seconds is replaced by ``sqlite:///<run_dir>/mlruns.db`` (artifacts in
``run_dir/mlartifacts``), said in one line on stderr, so training never waits on a dead server.
A sqlite store's new experiments keep their artifacts beside the database file
(``mlruns/<experiment>/``), not in whatever folder the process runs in. ``run_dir/mlflow.json``
says where the run went.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import re
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recfunnel.compat.mlflow import global_tracking_uri
from recfunnel.config import TrackingConfig, flatten

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Tracker", "package_versions", "file_sha256", "metric_name", "pip_requirements"]

FALLBACK_DB = "mlruns.db"
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the recfunnel package, logged with every model
RECORD = "mlflow.json"
PROBE_TIMEOUT_S = 3.0
MAX_PARAM_CHARS, MAX_TAG_CHARS, MAX_KEY_CHARS = 6000, 8000, 250  # MLflow's limits on values and keys
_PACKAGES = {
    "torch": ["torch"],
    "torchrec": ["torchrec"],
    "fbgemm_gpu": ["fbgemm_gpu", "fbgemm_gpu-cpu"],
    "mosaicml-streaming": ["mosaicml-streaming"],
    "mlflow": ["mlflow", "mlflow-skinny"],
    "numpy": ["numpy"],
    "pandas": ["pandas"],
}  # name -> distributions providing it (first found)
# What the pyfunc model imports when it is loaded; pinned to this environment's versions.
_SERVING_DISTS = ["torch", "torchrec", "fbgemm_gpu", "fbgemm_gpu-cpu", "mlflow", "numpy", "pandas", "pyarrow", "pyyaml"]


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def package_versions() -> dict[str, str]:
    """Versions of the packages a result depends on, e.g. ``{"torch": "2.13.0+cpu", "python": "3.11.9"}``."""
    out = {name: next(filter(None, map(_version, dists)), "not installed") for name, dists in _PACKAGES.items()}
    return out | {"python": platform.python_version()}


def pip_requirements() -> list[str]:
    """Exact pins (``torch==2.13.0+cpu``) of what the logged model needs to load; no inference (slow)."""
    return [f"{d}=={v}" for d in _SERVING_DISTS if (v := _version(d))]


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def metric_name(name: str) -> str:
    """An MLflow-safe metric/param key: ``recall@100`` -> ``recall_at_100``, other odd characters -> ``_``."""
    name = name.replace("@", "_at_")
    return re.sub(r"[^A-Za-z0-9_\-. /:]", "_", name)[:MAX_KEY_CHARS]


def _default_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def _unreachable(uri: str) -> str | None:
    """Why the store cannot be used now (None when it answers). HTTP servers get one ``/health``
    probe with a short timeout (MLflow's own client would retry for minutes); other stores one query."""
    try:
        if uri.startswith(("http://", "https://")):
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S):
                return None  # urlopen raises on 4xx / 5xx
        from mlflow import MlflowClient

        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        return None
    except Exception as e:  # refused, timed out, DNS, 5xx, unwritable file: all mean "not usable now"
        reason = (str(e).strip().splitlines() or [""])[0][:160]
        return f"{type(e).__name__}: {reason}" if reason else type(e).__name__


def _sqlite_artifacts(uri: str, experiment: str) -> str | None:
    """Artifact folder of a new experiment beside a sqlite database file, ``mlruns/<experiment>``
    (None for other stores: their server decides)."""
    if not uri.startswith("sqlite:///"):
        return None
    folder = re.sub(r"[^\w.-]", "_", experiment)
    return (Path(uri[len("sqlite:///") :]).resolve().parent / "mlruns" / folder).as_uri()


@dataclass(kw_only=True)
class Tracker:
    """One MLflow run. With ``enabled=False`` (ranks other than 0) every method does nothing."""

    enabled: bool = False
    client: Any = None  # MlflowClient of tracking_uri
    run_id: str | None = None
    tracking_uri: str | None = None
    experiment_id: str | None = None
    run_dir: Path | None = None
    fell_back: bool = False  # the configured store was unreachable: tracking_uri is the run dir's
    model_uri: str | None = None
    _ended: bool = False

    @classmethod
    def start(
        cls, cfg: TrackingConfig, *, run_dir: Path, enabled: bool = True, quiet: bool = False, resume: bool = False
    ) -> Tracker:
        """Open a run in ``cfg.experiment`` (created if new), named ``cfg.run_name``; with ``resume``,
        reopen the run recorded in ``run_dir`` (its metrics go on from the step they stopped at)."""
        if not enabled:
            return cls(enabled=False)
        from mlflow import MlflowClient

        # a new sqlite store's migrations (a dozen INFO lines) and the input-example check of log_model
        for name in ("alembic", "mlflow.store.db.utils", "mlflow.pyfunc", "mlflow.models"):
            logging.getLogger(name).setLevel(logging.WARNING)
        if resume and (reopened := cls._reopen(Path(run_dir))) is not None:
            return reopened
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        uri, artifacts, fell_back = _default_uri(), None, False
        if (why := _unreachable(uri)) is not None:
            wanted = uri
            uri = f"sqlite:///{(run_dir / FALLBACK_DB).resolve()}"
            artifacts, fell_back = (run_dir / "mlartifacts").resolve().as_uri(), True
            if not quiet:
                print(
                    f"recfunnel: MLflow store {wanted} is unreachable ({why}); tracking to {uri} instead "
                    f"(view it: mlflow ui --backend-store-uri {uri})",
                    file=sys.stderr,
                )
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(cfg.experiment)
        experiment_id = (
            experiment.experiment_id
            if experiment
            else client.create_experiment(
                cfg.experiment, artifact_location=artifacts or _sqlite_artifacts(uri, cfg.experiment)
            )
        )
        run = client.create_run(experiment_id, run_name=cfg.run_name, tags={"recfunnel.run_dir": str(run_dir)})
        tracker = cls(
            client=client,
            run_id=run.info.run_id,
            tracking_uri=uri,
            experiment_id=experiment_id,
            run_dir=run_dir,
            fell_back=fell_back,
            enabled=True,
        )
        tracker._write_record()
        return tracker

    @classmethod
    def _reopen(cls, run_dir: Path) -> Tracker | None:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        try:
            record = json.loads((run_dir / RECORD).read_text())
            client = MlflowClient(tracking_uri=record["tracking_uri"])
            client.update_run(record["run_id"], status="RUNNING")
        except (OSError, ValueError, KeyError, MlflowException):
            return None  # the store moved or the run is gone: a new run it is
        return cls(
            client=client,
            run_id=record["run_id"],
            tracking_uri=record["tracking_uri"],
            experiment_id=record.get("experiment_id"),
            run_dir=run_dir,
            enabled=True,
            fell_back=record["tracking_uri"].endswith(FALLBACK_DB),
        )

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        failed = "KILLED" if exc_type and issubclass(exc_type, KeyboardInterrupt) else "FAILED"
        self.end("FINISHED" if exc_type is None else failed)

    def log_params(self, params: dict[str, Any]) -> None:
        """Nested dicts flattened (``train.batch_size``); values as text, cut to MLflow's 6000 chars."""
        if not self.enabled:
            return
        from mlflow.entities import Param

        items = [Param(metric_name(k), str(v)[:MAX_PARAM_CHARS]) for k, v in flatten(params).items()]
        # a resumed run keeps the values it started with (MLflow params cannot change; --set
        # overrides given on resumption are in the run folder's config.yaml)
        logged = self.client.get_run(self.run_id).data.params
        items = [p for p in items if p.key not in logged]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Numbers at ``step`` (default 0); names made MLflow-safe, NaN/inf values dropped."""
        if not self.enabled:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = []  # at most 1000 per batch, MLflow's limit
        for key, value in metrics.items():
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"metric {key!r}: expected a number, got {value!r}") from None
            if math.isfinite(value):
                items.append(Metric(metric_name(key), value, now, step or 0))
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def set_tags(self, tags: dict[str, Any]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import RunTag

        self.client.log_batch(
            self.run_id, tags=[RunTag(metric_name(k), str(v)[:MAX_TAG_CHARS]) for k, v in tags.items()]
        )

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def log_figure(self, fig: Any, name: str) -> None:
        """A matplotlib Figure as ``<name>.png`` (name may hold folders: ``plots/curves``)."""
        if self.enabled:
            self.client.log_figure(self.run_id, fig, name if name.endswith(".png") else f"{name}.png")

    def log_model(
        self, model_dir: Path, *, register_as: str | None = None, input_example: pd.DataFrame | None = None
    ) -> str | None:
        """Log a model folder (``save_model``'s) as an MLflow pyfunc; register it under ``register_as``.

        The recfunnel package travels with it (``code/``), loaded "from code" rather than unpickled,
        with exact ``pip_requirements()`` (inferring them takes ~10 s). Returns the model URI for
        ``mlflow.pyfunc.load_model`` (``models:/<id>``); None when disabled.
        """
        if not self.enabled:
            return None
        import mlflow
        from mlflow.models import Model

        signature = None
        if input_example is not None:
            # Name the columns but leave their types open: the encoder takes ids as numbers or text,
            # lists or "a|b" text and NaN for missing, which MLflow's inferred schema would refuse.
            from mlflow.models import ModelSignature
            from mlflow.types.schema import AnyType, ColSpec, Schema

            signature = ModelSignature(inputs=Schema([ColSpec(AnyType(), str(c)) for c in input_example.columns]))
        with tempfile.TemporaryDirectory() as tmp, global_tracking_uri(self.tracking_uri):
            loader = Path(tmp) / "recfunnel_model.py"
            loader.write_text(_LOADER)
            # Created here, not by Model.log: without an active run it would file the model under
            # the default experiment (and its artifacts under ./mlruns) instead of the run's.
            logged = mlflow.initialize_logged_model(
                name="model", source_run_id=self.run_id, experiment_id=self.experiment_id
            )
            info = Model.log(
                artifact_path=None,
                name="model",
                flavor=mlflow.pyfunc,
                run_id=self.run_id,
                model_id=logged.model_id,
                python_model=str(loader),
                artifacts={"model": str(Path(model_dir).resolve())},
                code_paths=[str(PACKAGE_DIR)],
                pip_requirements=pip_requirements(),
                registered_model_name=register_as,
                input_example=input_example,
                signature=signature,
            )
        self.model_uri = info.model_uri
        self._write_record()
        return self.model_uri

    def end(self, status: str = "FINISHED") -> None:
        """Close the run (FINISHED | FAILED | KILLED); a second call does nothing."""
        if not self.enabled or self._ended:
            return
        if status not in ("FINISHED", "FAILED", "KILLED"):
            raise ValueError(f"status: expected FINISHED, FAILED or KILLED, got {status!r}")
        self.client.set_terminated(self.run_id, status)
        self._ended = True

    def _write_record(self) -> None:
        path = self.run_dir / RECORD
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(
            json.dumps(
                {
                    "run_id": self.run_id,
                    "tracking_uri": self.tracking_uri,
                    "experiment_id": self.experiment_id,
                    "model_uri": self.model_uri,
                },
                indent=2,
            )
            + "\n"
        )
        tmp.replace(path)


# The pyfunc's entry point ("models from code"): MLflow runs this file when it loads the model.
_LOADER = """import mlflow
from recfunnel.tracking.pyfunc import RecfunnelPyfunc

mlflow.models.set_model(RecfunnelPyfunc())
"""
