"""The sharding plan TorchRec's planner chose, as a table for people and for MLflow."""

from __future__ import annotations

from typing import Any

from torch import nn
from torchrec.distributed import sharding_plan as helpers
from torchrec.distributed.types import ShardingPlan
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

from recfunnel.config import ShardingConfig
from recfunnel.errors import ConfigError
from recfunnel.report import table

__all__ = ["plan_rows", "plan_table", "forced_plan"]

HEADERS = ["table", "rows", "dim", "sharding", "kernel", "ranks", "memory"]


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def plan_rows(
    plan: ShardingPlan, tables: dict[str, tuple[int, int]], optimizer_floats_per_row: float = 1.0
) -> list[list[Any]]:
    """One row per table: rows, dim (from ``tables``: name -> (rows, dim)), sharding type, compute
    kernel, ranks, and memory of the weights plus optimizer state (``optimizer_floats_per_row``
    floats per row: 1 for row-wise Adagrad, ``dim`` for full Adagrad), all copies together."""
    out = []
    for module_plan in plan.plan.values():
        for name, p in module_plan.items():
            rows, dim = tables.get(name, (0, 0))
            copies = len(p.ranks or [0]) if p.sharding_type == "data_parallel" else 1
            memory = 4 * rows * (dim + optimizer_floats_per_row) * copies
            out.append(
                [
                    name,
                    rows,
                    dim,
                    p.sharding_type,
                    p.compute_kernel,
                    ",".join(map(str, p.ranks or [])),
                    _bytes(int(memory)),
                ]
            )
    return out


def plan_table(plan: ShardingPlan, tables: dict[str, tuple[int, int]], optimizer_floats_per_row: float = 1.0) -> str:
    return table(plan_rows(plan, tables, optimizer_floats_per_row), HEADERS, title="sharding plan")


def _sharder(kind: str, index: int, world_size: int, kernel: str):
    """TorchRec's helper for one table; ``kernel`` fused keeps the optimizer inside the lookup
    kernel (data-parallel and table-row-wise tables use TorchRec's own choice)."""
    if kind == "row_wise":
        return helpers.row_wise(compute_kernel=kernel)
    if kind == "column_wise":
        return helpers.column_wise(ranks=list(range(world_size)), compute_kernel=kernel)
    if kind == "table_row_wise":
        return helpers.table_row_wise(host_index=0)
    if kind == "data_parallel":
        return helpers.data_parallel()
    return helpers.table_wise(rank=index % world_size, compute_kernel=kernel)


def forced_plan(
    model: nn.Module, cfg: ShardingConfig, world_size: int, local_size: int, device_type: str
) -> ShardingPlan:
    """A plan with each table sharded as ``cfg`` says; tables it leaves to ``auto`` (or does not
    name) go table-wise, spread round-robin over the ranks. Unknown table names are an error."""
    if any(isinstance(m, EmbeddingCollection) for m in model.modules()):
        raise ConfigError(
            "sharding.tables: a forced plan covers pooled tables only, and this model has an unpooled one "
            "(model.history_pooling: attention); leave the sharding to the planner"
        )
    collections = {path: m for path, m in model.named_modules() if isinstance(m, EmbeddingBagCollection)}
    names = [c.name for m in collections.values() for c in m.embedding_bag_configs()]
    by_name = {t.table: t for t in cfg.tables}
    for i, t in enumerate(cfg.tables):
        if t.table != "*" and t.table not in names:
            raise ConfigError(f"sharding.tables[{i}].table: no embedding table {t.table!r}; the model has {names}")
    default = by_name.get("*")
    plan, index = {}, 0
    for path, module in collections.items():
        per_param = {}
        for config in module.embedding_bag_configs():
            wanted = by_name.get(config.name, default)
            kind = wanted.type if wanted is not None and wanted.type != "auto" else "table_wise"
            kernel = wanted.kernel if wanted is not None and wanted.kernel != "auto" else "fused"
            per_param[config.name] = _sharder(kind, index, world_size, kernel)
            index += 1
        plan[path] = helpers.construct_module_sharding_plan(
            module, per_param, local_size=local_size, world_size=world_size, device_type=device_type
        )
    return ShardingPlan(plan)
