"""``recfunnel evaluate --run RUN_DIR``: a finished run's metrics beside its baselines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recfunnel.errors import RecfunnelError
from recfunnel.train.summary import print_summary

__all__ = ["load_metrics", "evaluate_run"]


def load_metrics(run: str | Path) -> dict[str, Any]:
    path = Path(run) / "metrics.json"
    if not path.is_file():
        raise RecfunnelError(f"{path}: missing; is {run} a finished run of `recfunnel train`?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RecfunnelError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None


def evaluate_run(run: str | Path, as_json: bool = False) -> dict[str, Any]:
    metrics = load_metrics(run)
    if as_json:
        print(json.dumps(metrics, indent=None))
    else:
        print_summary(metrics, Path(run))
    return metrics
