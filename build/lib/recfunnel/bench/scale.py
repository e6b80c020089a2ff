"""Training throughput on 1 and N processes of this machine, at the same global batch.

Each measurement is a whole ``recfunnel train`` (1 epoch, no baselines) in a fresh process tree,
as a user runs it; the figure is the loop's own samples/s (training steps only, all ranks), and
the wall time of the command is reported beside it. One process gets every core as torch
threads; N processes get cores/N threads each, so every variant uses the same hardware.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from recfunnel.report import table

__all__ = ["bench_scale", "print_scale"]


def _launcher(kind: str, processes: int) -> list[str]:
    if processes == 1:
        return []
    if kind == "spark":
        return ["--launcher", "spark", "--num-processes", str(processes), "--no-local-mode"]
    return ["--launcher", "torchrun", "--nproc", str(processes)]


def _run(data: str, model: str, launcher: str, processes: int, global_batch: int, threads: int) -> dict[str, float]:
    out = Path(tempfile.mkdtemp(prefix="recfunnel-bench-scale-"))
    try:
        cmd = [
            sys.executable,
            "-m",
            "recfunnel.cli",
            "train",
            "--model",
            model,
            "--data",
            data,
            "--out",
            str(out / "run"),
            "--quiet",
            "--set",
            "train.epochs=1",
            "--set",
            "eval.baselines=false",
            "--set",
            f"train.batch_size={global_batch // processes}",
            "--set",
            f"train.threads={threads}",
            "--set",
            "tracking.log_checkpoints=false",
            *_launcher(launcher, processes),
        ]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{out}/mlflow.db"})
        wall = time.perf_counter() - start
        metrics = json.loads((out / "run" / "metrics.json").read_text())
        return {"samples_per_s": metrics["train"]["samples_per_s"], "wall_s": wall}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def bench_scale(
    data: str | Path,
    *,
    model: str = "dlrm",
    processes: tuple[int, ...] = (1, 2),
    launchers: tuple[str, ...] = ("torchrun", "spark"),
    global_batch: int = 4096,
    repeats: int = 3,
) -> dict[str, Any]:
    """Median samples/s and wall time of ``repeats`` runs per (launcher, processes)."""
    cores = os.cpu_count() or 1
    rows = []
    variants = [("none", 1)] if 1 in processes else []
    variants += [(launcher, n) for launcher in launchers for n in processes if n > 1]
    for launcher, n in variants:
        runs = [_run(str(data), model, launcher, n, global_batch, max(1, cores // n)) for _ in range(repeats)]
        rows.append(
            {
                "launcher": launcher,
                "processes": n,
                "threads_per_process": max(1, cores // n),
                "samples_per_s": statistics.median(r["samples_per_s"] for r in runs),
                "wall_s": statistics.median(r["wall_s"] for r in runs),
                "all_samples_per_s": [round(r["samples_per_s"]) for r in runs],
            }
        )
    base = next((r["samples_per_s"] for r in rows if r["processes"] == 1), None)
    for r in rows:
        r["vs_1_process"] = round(r["samples_per_s"] / base, 2) if base else None
    return {
        "model": model,
        "data": str(data),
        "global_batch": global_batch,
        "cores": cores,
        "repeats": repeats,
        "rows": rows,
    }


def print_scale(result: dict[str, Any]) -> None:
    rows = [
        [
            r["launcher"],
            r["processes"],
            r["threads_per_process"],
            round(r["samples_per_s"]),
            r["vs_1_process"],
            round(r["wall_s"], 1),
        ]
        for r in result["rows"]
    ]
    print(
        table(
            rows,
            ["launcher", "processes", "threads each", "samples/s", "vs 1 process", "wall s"],
            title=f"{result['model']} training, global batch {result['global_batch']:,}, {result['cores']} cores, "
            f"median of {result['repeats']}",
        )
    )
