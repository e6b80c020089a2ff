"""MLflow (3.17): setting the global tracking URI for one fluent-only call and putting it back.

``mlflow.set_tracking_uri`` has no public getter of what was set (``mlflow.get_tracking_uri()``
answers the effective URI, never "unset"), and MLflow's own ``_use_tracking_uri`` deletes
``MLFLOW_TRACKING_URI`` on exit. So the previous value is read from ``utils._tracking_uri``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["PRIVATE_API", "global_tracking_uri", "missing"]

PRIVATE_API: list[tuple[str, str]] = [("mlflow.tracking._tracking_service.utils", "_tracking_uri")]


def _utils() -> Any:
    from mlflow.tracking._tracking_service import utils

    return utils


def missing() -> list[str]:
    """The entries of ``PRIVATE_API`` this MLflow version lacks; empty when all are there."""
    try:
        utils = _utils()
    except ImportError:
        return [f"{where}.{name}" for where, name in PRIVATE_API]
    return [f"{where}.{name}" for where, name in PRIVATE_API if not hasattr(utils, name)]


@contextmanager
def global_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's global tracking URI set to ``uri`` for a fluent-only call (``Model.log``), then put
    back as it was, environment included; no artifact progress bars on stderr meanwhile."""
    import mlflow

    utils = _utils()
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    old, env = getattr(utils, "_tracking_uri", None), {k: os.environ[k] for k in keys if k in os.environ}
    mlflow.set_tracking_uri(uri)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        mlflow.set_tracking_uri(old)  # type: ignore[arg-type]  # None: back to unset, which MLflow takes
        for key in keys:
            os.environ.pop(key, None)
        os.environ.update(env)
