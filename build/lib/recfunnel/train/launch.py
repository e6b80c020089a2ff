"""Starting ``recfunnel train`` on several processes of this machine with torchrun.

The training function itself reads its world from the environment, so the launcher only re-runs
the same command line under ``torch.distributed.run`` (elastic, standalone rendezvous). The Spark
launcher (:mod:`recfunnel.train.spark_launch`) re-runs it the same way in each Spark rank.
"""

from __future__ import annotations

import subprocess
import sys

__all__ = ["without_launcher", "run_torchrun"]

# options of the launchers that each process must not see again: they take a value ...
LAUNCHER_OPTIONS = ("--launcher", "--nproc", "--num-processes", "--spark-master")
# ... or are flags
LAUNCHER_FLAGS = ("--local-mode", "--no-local-mode")


def without_launcher(argv: list[str]) -> list[str]:
    """``argv`` minus the launcher options, in their ``--opt value`` and ``--opt=value`` forms,
    and minus the launcher flags."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in LAUNCHER_OPTIONS:
            skip = True
            continue
        if arg in LAUNCHER_FLAGS or arg.startswith(tuple(f"{o}=" for o in LAUNCHER_OPTIONS)):
            continue
        out.append(arg)
    return out


def run_torchrun(argv: list[str], nproc: int) -> int:
    """Run ``recfunnel <argv>`` as ``nproc`` processes (gloo on CPU, nccl on GPUs); the exit code."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "recfunnel.cli",
        *without_launcher(argv),
    ]
    return subprocess.run(cmd).returncode
