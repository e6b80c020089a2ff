"""The service under load: the request rate it sustains, what it does past saturation, and the
same load against another commit's server, side by side on one machine.

A real ``recfunnel serve`` child process per server measured (funnel: retrieve ``candidates`` ->
filter -> rank -> re-rank -> top ``k``) and, in this process, an open-loop generator
(:mod:`recfunnel.bench.load`): requests go out on a fixed schedule whatever the answers do, and a
latency runs from the request's *scheduled* time to its last byte. Per server:

- **sweep**: offered rates rising by ``STEP`` from ``START`` until one fails (p99 over
  ``p99_ms``, or over ``FAILED_SHARE`` of the requests not answered 200: refused, failed or not
  sent because ``concurrency`` were in flight), then ``BISECTIONS`` bisections between the last
  pass and the first failure (down to 5 %: a ratio of two servers' rates is not a ratio of grid
  steps). The **sustained rate** is the highest offered rate that passed. Given ``rates``,
  exactly those are measured instead.
- **overload** (this commit's servers): ``overload`` times the sustained rate for ``seconds``, then
  half the sustained rate for ``RECOVERY_S``: the share refused (503), how fast refusals come
  back, the admitted requests' p50/p99, any other error, and the **recovery time**: from the end
  of the overload to the first ``WINDOW_S`` window after which every window has p99 <= ``p99_ms``
  and only 200s.
- **stages**: the server's per-stage times per request (stage time of the batch / batch size) at
  the lowest rate (batches of one) and at the sustained rate (the batched operating point).
- **memory**: proportional set size of each worker (HTTP loop + funnel process; shared pages split
  among the processes sharing them), from /proc.

``against``: a git revision whose ``src/`` is extracted to a temporary folder and served by this
Python (the same installed libraries), measured first, as the baseline of the ratio.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recfunnel.bench.load import Record, open_loop, request_bytes, run
from recfunnel.bench.machine import machine
from recfunnel.errors import RecfunnelError
from recfunnel.serve.metrics import memory_mib
from recfunnel.serve.process import ServerProcess
from recfunnel.serve.resolve import resolve_model
from recfunnel.serve.workers import children_of

__all__ = ["bench_serve"]

START = 50.0  # req/s, the sweep's first rate
STEP = 1.5  # each next rate of the sweep, until one fails
BISECTIONS = 3  # then between the last pass and the first failure: 1.5x narrowed to ~1.06x
MAX_RATE = 50_000.0
FAILED_SHARE = 0.001  # more requests than this not answered 200: the rate is not sustained
RECOVERY_S = 4.0
PRECONNECT = 64  # connections opened before a step's schedule starts (the server sees requests, not handshakes)
WINDOW_S = 0.25
REQUEST_USERS = 2000  # distinct request bodies, cycled


@dataclass
class _Server:
    name: str
    args: list[Any]
    workers: int = 1
    env: dict[str, str] = field(default_factory=dict)
    baseline: bool = False


def bench_serve(
    run_dir: str | Path,
    ranker: str | Path | None = None,
    index: str | Path | None = None,
    rates: Sequence[float] | None = None,
    seconds: float = 5.0,
    warmup: float = 1.0,
    k: int = 10,
    candidates: int = 100,
    concurrency: int = 256,
    workers: Sequence[int] = (1,),
    against: str | None = None,
    overload: Sequence[float] = (2.0, 4.0),
    p99_ms: float = 50.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Each server in turn (``against`` first, then this commit with each count of ``workers``):
    its sweep, sustained rate, overload phases, stage times and memory."""
    for name, value in (("seconds", seconds), ("k", k), ("candidates", candidates), ("p99_ms", p99_ms)):
        if not value > 0:
            raise ValueError(f"{name}: expected a number > 0, got {value!r}")
    if not all(isinstance(w, int) and w >= 1 for w in workers):
        raise ValueError(f"workers: expected integers >= 1, got {list(workers)!r}")
    rng = np.random.default_rng(seed)
    users = _known_users(run_dir)
    bodies = [
        request_bytes("127.0.0.1", "/recommend", {"user_id": users[i], "k": k})
        for i in rng.integers(0, len(users), REQUEST_USERS)
    ]
    common: list[Any] = ["--run", run_dir, "--set", f"candidates={candidates}"]
    common += ["--ranker", ranker] if ranker is not None else []
    common += ["--index", index] if index is not None else []
    results = []
    with ExitStack() as stack:
        servers = []
        if against is not None:
            old_src = stack.enter_context(_source_of(against))
            servers.append(_Server(f"{against} (before)", common, env={"PYTHONPATH": old_src}, baseline=True))
        here = _revision()
        for w in workers:
            extra = ["--workers", str(w)] if w > 1 else []
            servers.append(_Server(f"{here}{f', {w} workers' if w > 1 else ''}", common + extra, workers=w))
        for server in servers:
            results.append(_bench_one(server, bodies, rates, seconds, warmup, concurrency, overload, p99_ms))
    baseline = next((r["sustained"] for r in results if r["baseline"]), None)
    for r in results:
        r["vs_baseline"] = round(r["sustained"] / baseline, 2) if baseline and r["sustained"] else None
    return {
        "run": str(run_dir),
        "ranker": None if ranker is None else str(ranker),
        "index": "exact, built in memory" if index is None else str(index),
        "k": k,
        "candidates": candidates,
        "concurrency": concurrency,
        "seconds": seconds,
        "warmup": warmup,
        "p99_ms": p99_ms,
        "machine": machine(threads=1),
        "servers": results,
    }


def _bench_one(
    server: _Server,
    bodies: list[bytes],
    rates: Sequence[float] | None,
    seconds: float,
    warmup: float,
    concurrency: int,
    overload: Sequence[float],
    p99_ms: float,
) -> dict[str, Any]:
    print(f"bench serve: {server.name} ...", file=sys.stderr, flush=True)
    with ServerProcess(server.args, env=server.env) as process:

        def step(rate: float) -> dict[str, Any]:
            if warmup > 0:
                run(open_loop(process.url, bodies, rate, warmup, concurrency=concurrency))
            cpu = _tree_cpu(process.process.pid)
            start = time.perf_counter()
            records = run(
                open_loop(
                    process.url, bodies, rate, seconds, concurrency=concurrency, keep_body=400, preconnect=PRECONNECT
                )
            )
            cores = (_tree_cpu(process.process.pid) - cpu) / (time.perf_counter() - start)
            result = _summary(records, rate, seconds, p99_ms)
            result["server_cores"] = round(cores, 2)
            print(
                f"  {rate:,.0f} req/s offered: p99 {result['p99_ms']:.1f} ms, {result['not_ok']} not answered 200"
                f"{'' if result['passed'] else ' (not sustained)'}",
                file=sys.stderr,
                flush=True,
            )
            return result

        sweep = [step(r) for r in rates] if rates else _sweep(step)
        passed = [s for s in sweep if s["passed"]]
        sustained = max((s["rate"] for s in passed), default=0.0)
        phases = []
        if not server.baseline and sustained > 0:
            for factor in overload:
                phases.append(_overload(process, bodies, factor, sustained, seconds, concurrency, p99_ms))
        stages = {
            "lowest rate": min(sweep, key=lambda s: s["rate"])["stages_per_request"],
            "sustained rate": max(passed, key=lambda s: s["rate"])["stages_per_request"] if passed else {},
        }
        memory = _worker_memory(process.process.pid, server.workers)
        total_pss = round(sum(m["pss"] for m in (memory_mib(p) for p in _tree(process.process.pid)) if m), 1)
    return {
        "server": server.name,
        "workers": server.workers,
        "baseline": server.baseline,
        "sweep": sweep,
        "sustained": sustained,
        "overload": phases,
        "stages": stages,
        "memory_mib": memory,
        "total_pss_mib": total_pss,
    }


def _sweep(step: Any) -> list[dict[str, Any]]:
    """Rising rates until one fails, then bisections between the last pass and that failure."""
    results, rate = [], START
    while rate <= MAX_RATE:
        results.append(step(rate))
        if not results[-1]["passed"]:
            break
        rate = round(rate * STEP)
    low = max((r["rate"] for r in results if r["passed"]), default=0.0)
    high = min((r["rate"] for r in results if not r["passed"]), default=None)
    for _ in range(BISECTIONS):
        if high is None or low == 0 or high - low < 0.05 * low:
            break
        middle = round((low + high) / 2)
        results.append(step(middle))
        low, high = (middle, high) if results[-1]["passed"] else (low, middle)
    return sorted(results, key=lambda r: r["rate"])


def _summary(records: list[Record], rate: float, seconds: float, p99_ms: float) -> dict[str, Any]:
    latency = np.array([r.latency for r in records if r.status is not None]) * 1000
    ok = [r for r in records if r.status == 200]
    statuses = [r.status for r in records]
    not_ok = len(records) - len(ok)
    p50, p99 = (float(np.percentile(latency, q)) for q in (50, 99)) if len(latency) else (math.nan, math.nan)
    # p99 over every request sent: a refusal is fast, and must not make a rate look sustained
    passed = bool(len(latency)) and p99 <= p99_ms and not_ok <= FAILED_SHARE * len(records)
    answers = [json.loads(r.body) for r in ok if r.body]
    return {
        "rate": rate,
        "scheduled": len(records),
        "achieved": round(len(ok) / seconds, 1),
        "p50_ms": round(p50, 2),
        "p99_ms": round(p99, 2),
        "refused": statuses.count(503),
        "errors": sum(1 for r in records if r.status not in (200, 503) and not r.dropped),
        "dropped": sum(r.dropped for r in records),
        "not_ok": not_ok,
        "passed": passed,
        "batch": float(np.median([a.get("batch", 1) for a in answers])) if answers else None,
        "stages_per_request": _stages(answers),
    }


def _stages(answers: list[dict[str, Any]]) -> dict[str, float]:
    """Median milliseconds per request of each funnel stage: the batch's time over its size."""
    out: dict[str, list[float]] = {}
    for answer in answers:
        batch = answer.get("batch", 1)
        for stage, ms in answer.get("timings_ms", {}).items():
            if stage not in ("queue", "total"):
                out.setdefault(stage, []).append(ms / batch)
    return {stage: round(float(np.median(v)), 3) for stage, v in out.items()}


def _overload(
    process: ServerProcess,
    bodies: list[bytes],
    factor: float,
    sustained: float,
    seconds: float,
    concurrency: int,
    p99_ms: float,
) -> dict[str, Any]:
    offered, after = factor * sustained, sustained / 2
    # every connection open first: an overload is of requests, not of TCP handshakes
    records = run(
        open_loop(
            process.url,
            bodies,
            offered,
            seconds,
            concurrency=concurrency,
            then=[(after, RECOVERY_S)],
            preconnect=concurrency,
        )
    )
    end = records[0].due + round(offered * seconds) / offered
    during = [r for r in records if r.due < end]
    admitted = np.array([r.latency for r in during if r.status == 200]) * 1000
    refused = np.array([r.latency for r in during if r.status == 503]) * 1000
    q = lambda v, p: round(float(np.percentile(v, p)), 2) if len(v) else None  # noqa: E731
    return {
        "factor": factor,
        "offered": round(offered, 1),
        "admitted_per_s": round(len(admitted) / seconds, 1),
        "admitted_p50_ms": q(admitted, 50),
        "admitted_p99_ms": q(admitted, 99),
        "refused_share": round(len(refused) / len(during), 4),
        "refused_p50_ms": q(refused, 50),
        "refused_p99_ms": q(refused, 99),
        "errors": sum(1 for r in during if r.status not in (200, 503) and not r.dropped),
        "dropped": sum(r.dropped for r in during),
        "recovery_s": _recovery(records, end, p99_ms),
    }


def _recovery(records: list[Record], end: float, p99_ms: float) -> float | None:
    """Seconds from ``end`` to the first window after which every window is normal again."""
    after = [r for r in records if r.due >= end]
    windows: dict[int, list[Record]] = {}
    for r in after:
        windows.setdefault(int((r.due - end) / WINDOW_S), []).append(r)
    normal = [
        all(r.status == 200 for r in w) and np.percentile([r.latency for r in w], 99) * 1000 <= p99_ms
        for _, w in sorted(windows.items())
    ]
    for i in range(len(normal)):
        if all(normal[i:]):
            return round(i * WINDOW_S, 2)
    return None


def _known_users(run_dir: str | Path) -> list[Any]:
    """Raw ids of the users a two-tower run (folder or MLflow URI) knows."""
    with tempfile.TemporaryDirectory(prefix="recfunnel-bench-") as tmp:
        folder = resolve_model(run_dir, tmp)
        if (folder / "model" / "model.pt").is_file():
            folder = folder / "model"
        user_key = json.loads((folder / "manifest.json").read_text())["roles"]["user"]
        users = pd.read_parquet(folder / "users.parquet", columns=[user_key])[user_key]
    return [u.item() if hasattr(u, "item") else u for u in users.to_numpy()]


class _source_of:
    """A git revision's ``src/`` in a temporary folder (removed on exit)."""

    def __init__(self, revision: str) -> None:
        self.revision = revision
        self._tmp: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> str:
        self._tmp = tempfile.TemporaryDirectory(prefix="recfunnel-against-")
        archive = subprocess.run(["git", "archive", self.revision, "src"], capture_output=True)
        if archive.returncode != 0:
            self._tmp.cleanup()
            reason = archive.stderr.decode(errors="replace").strip().splitlines()
            raise RecfunnelError(f"--against {self.revision}: not a revision of this git checkout ({reason[0]})")
        subprocess.run(["tar", "-x", "-C", self._tmp.name], input=archive.stdout, check=True)
        return str(Path(self._tmp.name) / "src")

    def __exit__(self, *exc: Any) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def _revision() -> str:
    """This checkout's short commit (``+`` when the tree has changes), or ``this tree``."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return "this tree"
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "")


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children_of(p)
    return out


def _tree_cpu(pid: int) -> float:
    """User + system CPU seconds so far of a process and its descendants (Linux /proc)."""
    total = 0.0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _worker_memory(pid: int, workers: int) -> list[dict[str, float]]:
    """Per worker: PSS and RSS of its processes (HTTP loop, funnel) together, in MiB."""
    out = []
    for top in [pid] if workers == 1 else children_of(pid):
        parts = [m for m in (memory_mib(p) for p in _tree(top)) if m]
        out.append({key: round(sum(m.get(key, 0.0) for m in parts), 1) for key in ("pss", "rss")})
    return out
