"""The sharding plan TorchRec's planner chose, as a table for people and for MLflow."""

from __future__ import annotations

from typing import Any

from torchrec.distributed.types import ShardingPlan

from recfunnel.report import table

__all__ = ["plan_rows", "plan_table"]

HEADERS = ["table", "rows", "dim", "sharding", "kernel", "ranks", "memory"]


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def plan_rows(plan: ShardingPlan, tables: dict[str, tuple[int, int]],
              optimizer_floats_per_row: float = 1.0) -> list[list[Any]]:
    """One row per table: rows, dim (from ``tables``: name -> (rows, dim)), sharding type, compute
    kernel, ranks, and memory of the weights plus optimizer state (``optimizer_floats_per_row``
    floats per row: 1 for row-wise Adagrad, ``dim`` for full Adagrad), all copies together."""
    out = []
    for module_plan in plan.plan.values():
        for name, p in module_plan.items():
            rows, dim = tables.get(name, (0, 0))
            copies = len(p.ranks or [0]) if p.sharding_type == "data_parallel" else 1
            memory = 4 * rows * (dim + optimizer_floats_per_row) * copies
            out.append([name, rows, dim, p.sharding_type, p.compute_kernel, ",".join(map(str, p.ranks or [])),
                        _bytes(int(memory))])
    return out


def plan_table(plan: ShardingPlan, tables: dict[str, tuple[int, int]], optimizer_floats_per_row: float = 1.0) -> str:
    return table(plan_rows(plan, tables, optimizer_floats_per_row), HEADERS, title="sharding plan")
