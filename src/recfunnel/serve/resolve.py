"""Where the service's models come from: a local run or model folder, or an MLflow model.

    resolve_model(".demo/runs/two-tower")                 -> the folder itself
    resolve_model("runs:/<run_id>/model", into=tmp)       -> tmp/.../artifacts/model
    resolve_model("models:/recfunnel-dlrm/latest", into=tmp)

``recfunnel train`` logs its model folder as an MLflow pyfunc whose ``artifacts/model`` is that
folder (``Tracker.log_model``); the MLmodel file says where (``flavors.python_function.artifacts
.model.path``). A downloaded (or any local) pyfunc folder with an MLmodel file is read the same way.
URIs resolve against ``MLFLOW_TRACKING_URI``.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import yaml

from recfunnel.errors import RecfunnelError

__all__ = ["resolve_model", "is_mlflow_uri"]

_URI = re.compile(r"^(runs|models|mlflow-artifacts|s3|gs|wasbs|abfss|dbfs|https?|file):/", re.IGNORECASE)


def is_mlflow_uri(location: str | Path) -> bool:
    return isinstance(location, str) and bool(_URI.match(location))


def resolve_model(location: str | Path, into: str | Path | None = None) -> Path:
    """A folder that ``load_trained`` accepts: ``location`` itself when it is a local run or model
    folder; for an MLflow model (URI, or a pyfunc folder) the recfunnel model folder inside it,
    downloaded under ``into`` (a new temporary folder when None; the caller removes it)."""
    if not is_mlflow_uri(location):
        path = Path(location)
        if not path.exists():
            raise RecfunnelError(
                f"{path}: no such folder (expected a run folder, a model folder or an MLflow "
                f"URI such as runs:/<run_id>/model or models:/<name>/<version>)"
            )
        return _inside_pyfunc(path) if (path / "MLmodel").is_file() else path
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    into = Path(into) if into is not None else Path(tempfile.mkdtemp(prefix="recfunnel-model-"))
    into.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars on stderr
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=str(location), dst_path=str(into))
    except (MlflowException, OSError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise RecfunnelError(
            f"{location}: cannot fetch the model from MLflow "
            f"({os.environ.get('MLFLOW_TRACKING_URI', 'default tracking URI')}): {reason}"
        ) from None
    if not (Path(local) / "MLmodel").is_file():
        raise RecfunnelError(
            f"{location}: not an MLflow model (no MLmodel file); give runs:/<run_id>/model, "
            f"models:/<name>/<version|latest> or models:/<model_id>"
        )
    return _inside_pyfunc(Path(local), str(location))


def _inside_pyfunc(folder: Path, name: str | None = None) -> Path:
    """The recfunnel model folder inside a logged pyfunc model ``folder``."""
    spec = yaml.safe_load((folder / "MLmodel").read_text()) or {}
    artifacts = spec.get("flavors", {}).get("python_function", {}).get("artifacts", {})
    inner = folder / artifacts.get("model", {}).get("path", "artifacts/model")
    if not (inner / "model.pt").is_file():
        raise RecfunnelError(
            f"{name or folder}: an MLflow model, but not one of recfunnel's (no artifacts/model/model.pt)"
        )
    return inner
