"""The tables of ``recfunnel bench serve``: the rate sweep, the sustained rate and memory, the
overload phases and the time per request by stage, from :func:`recfunnel.bench.serve.bench_serve`'s
result."""

from __future__ import annotations

from typing import Any

from recfunnel.bench.machine import describe
from recfunnel.bench.serve import FAILED_SHARE, RECOVERY_S, WINDOW_S
from recfunnel.report import table

__all__ = ["print_serve"]


def print_serve(result: dict[str, Any]) -> None:
    servers = result["servers"]
    ranker = " -> rank" if result["ranker"] else ""
    print(
        f"POST /recommend on loopback: retrieve {result['candidates']}{ranker} -> re-rank -> top {result['k']}; "
        f"open loop, {result['seconds']:g} s per rate after {result['warmup']:g} s warm-up, at most "
        f"{result['concurrency']} in flight\n{describe(result['machine'])}\n"
    )
    rows = [
        [
            s["server"],
            r["rate"],
            r["achieved"],
            r["p50_ms"],
            r["p99_ms"],
            r["refused"],
            r["errors"],
            r["dropped"],
            r["batch"],
            r["server_cores"],
            "yes" if r["passed"] else "no",
        ]
        for s in servers
        for r in s["sweep"]
    ]
    print(
        table(
            rows,
            [
                "server",
                "offered/s",
                "answered 200/s",
                "p50 ms",
                "p99 ms",
                "503",
                "errors",
                "dropped",
                "batch",
                "server cores",
                "sustained",
            ],
            title=f"rate sweep (sustained: p99 <= {result['p99_ms']:g} ms over every request, "
            f"<= {FAILED_SHARE:.1%} not answered 200)",
        )
    )
    print()
    print(
        table(
            [[s["server"], s["sustained"], s["vs_baseline"], *_memory_cells(s), s["total_pss_mib"]] for s in servers],
            ["server", "sustained req/s", "x baseline", "PSS MiB per worker", "RSS MiB per worker", "PSS MiB in all"],
            title="sustained rate and memory",
        )
    )
    phases = [(s["server"], p) for s in servers for p in s["overload"]]
    if phases:
        print()
        print(
            table(
                [
                    [
                        name,
                        f"{p['factor']:g}x",
                        p["offered"],
                        p["admitted_per_s"],
                        p["admitted_p50_ms"],
                        p["admitted_p99_ms"],
                        f"{p['refused_share']:.1%}",
                        p["refused_p50_ms"],
                        p["refused_p99_ms"],
                        p["errors"],
                        p["dropped"],
                        "never" if p["recovery_s"] is None else p["recovery_s"],
                    ]
                    for name, p in phases
                ],
                [
                    "server",
                    "overload",
                    "offered/s",
                    "admitted/s",
                    "admitted p50",
                    "admitted p99",
                    "503 share",
                    "503 p50 ms",
                    "503 p99 ms",
                    "errors",
                    "dropped",
                    "recovery s",
                ],
                title=f"past saturation: x the sustained rate for {result['seconds']:g} s, then half of it for "
                f"{RECOVERY_S:g} s (recovery: until every {WINDOW_S:g} s window has p99 <= {result['p99_ms']:g} ms "
                "and only 200s)",
            )
        )
    stages = list(dict.fromkeys(st for s in servers for v in s["stages"].values() for st in v))
    print()
    print(
        table(
            [
                [s["server"], where, *(s["stages"][where].get(st) for st in stages)]
                for s in servers
                for where in s["stages"]
            ],
            ["server", "at", *(f"{st} ms" for st in stages)],
            title="server time per request by stage (a batch's time over its size; medians)",
        )
    )


def _memory_cells(server: dict[str, Any]) -> list[str]:
    memory = server["memory_mib"]
    return [", ".join(f"{m[key]:,.0f}" for m in memory) for key in ("pss", "rss")]
