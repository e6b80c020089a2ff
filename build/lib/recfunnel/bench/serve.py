"""Latency and throughput of ``POST /recommend`` on loopback, under an open-loop load.

A real ``recfunnel serve`` child process (funnel: retrieve ``candidates`` -> filter -> rank ->
re-rank -> top ``k``) and, in this process, a load generator that sends requests on a fixed
schedule, ``rate`` per second, whatever the answers do (open loop: a slow server is not given
time to catch up, as a closed loop of back-to-back requests would). At most ``concurrency``
requests are in flight; one due while that many are waiting is not sent and counts as dropped.
A request's latency runs from its *scheduled* time to its last byte, so queueing anywhere (the
generator, the server's socket, its worker pool) shows in it.

Each rate gets ``warmup`` seconds of the same load first (not measured). Users are drawn at random
from the run's known users. The server's own per-stage timings come back in each answer
(``timings_ms``); their medians are reported beside the client's view. CPU seconds of the server
(from /proc, Linux), of the generator and of everything else on the machine say how much of it
each took: the generator shares the machine with the server, and a shared machine is noisy.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from recfunnel.report import table
from recfunnel.serve.process import ServerProcess
from recfunnel.serve.resolve import resolve_model

__all__ = ["bench_serve", "print_serve"]

LATE_MS = 5.0  # a request sent this much after its time: the generator itself fell behind


def bench_serve(
    run: str | Path,
    ranker: str | Path | None = None,
    index: str | Path | None = None,
    rate: float | Sequence[float] = 100.0,
    seconds: float = 20.0,
    k: int = 10,
    candidates: int = 100,
    concurrency: int = 32,
    warmup: float = 2.0,
    seed: int = 0,
) -> dict[str, Any]:
    """One server, then one measured load per ``rate`` (requests/s), in order. Returns the setup
    and ``runs``: per rate, latency percentiles (ms), achieved requests/s, errors, dropped and late
    requests, CPU use, and the server's median stage timings (ms)."""
    rates = [float(rate)] if isinstance(rate, (int, float)) else [float(r) for r in rate]
    for name, value in (
        ("seconds", seconds),
        ("k", k),
        ("candidates", candidates),
        ("concurrency", concurrency),
        *(("rate", r) for r in rates),
    ):
        if not value > 0:
            raise ValueError(f"{name}: expected a number > 0, got {value!r}")
    users = _known_users(run)
    args: list[Any] = ["--run", run, "--set", f"candidates={candidates}"]
    if ranker is not None:
        args += ["--ranker", ranker]
    if index is not None:
        args += ["--index", index]
    with ServerProcess(args) as server:
        runs = [asyncio.run(_measure(server, users, r, seconds, warmup, k, concurrency, seed)) for r in rates]
    return {
        "run": str(run),
        "ranker": None if ranker is None else str(ranker),
        "index": "exact, built in memory" if index is None else str(index),
        "k": k,
        "candidates": candidates,
        "concurrency": concurrency,
        "seconds": seconds,
        "warmup": warmup,
        "users": len(users),
        "cores": os.cpu_count(),
        "runs": runs,
    }


def _known_users(run: str | Path) -> list[Any]:
    """Raw ids of the users a two-tower run (folder or MLflow URI) knows."""
    with tempfile.TemporaryDirectory(prefix="recfunnel-bench-") as tmp:
        folder = resolve_model(run, tmp)
        if (folder / "model" / "model.pt").is_file():
            folder = folder / "model"
        user_key = json.loads((folder / "manifest.json").read_text())["roles"]["user"]
        users = pd.read_parquet(folder / "users.parquet", columns=[user_key])[user_key]
    return [u.item() if hasattr(u, "item") else u for u in users.to_numpy()]


async def _measure(
    server: ServerProcess,
    users: list[Any],
    rate: float,
    seconds: float,
    warmup: float,
    k: int,
    concurrency: int,
    seed: int,
) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    rng = np.random.default_rng(seed)
    gc.collect()
    gc.freeze()  # a full collection of this process's long-lived objects would stall the schedule
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=30) as client:
        if warmup > 0:
            await _load(client, users, rate, warmup, k, concurrency, rng)
        server_cpu, client_cpu, busy = _cpu_seconds(server.process.pid), time.process_time(), _busy_seconds()
        result = await _load(client, users, rate, seconds, k, concurrency, rng)
        server_cpu = _cpu_seconds(server.process.pid) - server_cpu if server_cpu is not None else None
        client_cpu = time.process_time() - client_cpu
        busy = _busy_seconds() - busy if busy is not None else None
    other = busy - server_cpu - client_cpu if busy is not None and server_cpu is not None else None
    return _summary(result, rate, server_cpu, client_cpu, other)


async def _load(
    client: httpx.AsyncClient,
    users: list[Any],
    rate: float,
    seconds: float,
    k: int,
    concurrency: int,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Send ``rate * seconds`` requests on schedule; collect each one's latency, status, timings."""
    loop = asyncio.get_running_loop()
    n = max(1, round(rate * seconds))
    picks = rng.integers(0, len(users), n)
    records: list[tuple[float, int | None, dict[str, float] | None]] = []
    in_flight, dropped, late = 0, 0, 0
    start = loop.time() + 0.01

    async def one(scheduled: float, user: Any) -> None:
        nonlocal in_flight
        try:
            response = await client.post("/recommend", json={"user_id": user, "k": k})
            timings = response.json().get("timings_ms") if response.status_code == 200 else None
            records.append((loop.time() - scheduled, response.status_code, timings))
        except httpx.HTTPError:
            records.append((loop.time() - scheduled, None, None))
        finally:
            in_flight -= 1

    tasks = []
    for i in range(n):
        scheduled = start + i / rate
        if (delay := scheduled - loop.time()) > 0:
            await asyncio.sleep(delay)
        elif -delay * 1000 > LATE_MS:
            late += 1
        if in_flight >= concurrency:
            dropped += 1
            continue
        in_flight += 1
        tasks.append(asyncio.create_task(one(scheduled, users[picks[i]])))
    await asyncio.gather(*tasks)
    return {"records": records, "elapsed": loop.time() - start, "scheduled": n, "dropped": dropped, "late": late}


def _summary(
    result: dict[str, Any], rate: float, server_cpu: float | None, client_cpu: float, other_cpu: float | None
) -> dict[str, Any]:
    records, elapsed = result["records"], result["elapsed"]
    ok = [r for r in records if r[1] == 200]
    latency = np.array([r[0] for r in ok]) * 1000
    quantiles = np.percentile(latency, [50, 90, 99]) if len(latency) else [float("nan")] * 3
    stages: dict[str, list[float]] = {}
    for _, _, timings in ok:
        for stage, ms in (timings or {}).items():
            stages.setdefault(stage, []).append(ms)
    return {
        "rate": rate,
        "scheduled": result["scheduled"],
        "sent": len(records),
        "ok": len(ok),
        "errors": len(records) - len(ok),
        "dropped": result["dropped"],
        "late": result["late"],
        "requests_per_s": round(len(ok) / elapsed, 1),
        "p50_ms": round(float(quantiles[0]), 2),
        "p90_ms": round(float(quantiles[1]), 2),
        "p99_ms": round(float(quantiles[2]), 2),
        "max_ms": round(float(latency.max()), 2) if len(latency) else float("nan"),
        "server_cores": None if server_cpu is None else round(server_cpu / elapsed, 2),
        "client_cores": round(client_cpu / elapsed, 2),
        "other_cores": None if other_cpu is None else round(max(0.0, other_cpu) / elapsed, 2),
        "server_stage_ms": {s: round(statistics.median(v), 3) for s, v in stages.items()},
    }


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _busy_seconds() -> float | None:
    """CPU seconds the whole machine spent busy so far, all cores (Linux /proc/stat; None elsewhere):
    what other processes took from a shared machine during a measurement."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def print_serve(result: dict[str, Any]) -> None:
    runs = result["runs"]
    rows = [
        [
            r["rate"],
            r["requests_per_s"],
            r["p50_ms"],
            r["p90_ms"],
            r["p99_ms"],
            r["max_ms"],
            r["errors"],
            r["dropped"],
            r["late"],
            r["server_cores"],
            r["client_cores"],
            r["other_cores"],
        ]
        for r in runs
    ]
    ranker = f" -> rank ({result['ranker']})" if result["ranker"] else ""
    print(
        table(
            rows,
            [
                "target req/s",
                "achieved req/s",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "max ms",
                "errors",
                "dropped",
                "late",
                "server cores",
                "client cores",
                "other cores",
            ],
            title=f"POST /recommend on loopback: retrieve {result['candidates']}{ranker} -> top {result['k']}; "
            f"{result['seconds']:g} s per rate after {result['warmup']:g} s warm-up, open loop, at most "
            f"{result['concurrency']} in flight, {result['users']:,} users, {result['cores']} cores",
        )
    )
    stages = list(dict.fromkeys(s for r in runs for s in r["server_stage_ms"]))
    print()
    print(
        table(
            [[r["rate"], *(r["server_stage_ms"].get(s) for s in stages)] for r in runs],
            ["target req/s", *(f"{s} ms" for s in stages)],
            title="server-side timings, median per request (queue: waiting for a funnel thread; total: the "
            "funnel call)",
        )
    )
