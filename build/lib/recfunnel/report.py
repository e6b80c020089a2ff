"""Plain-text tables for summaries printed at the end of a command."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["table", "fmt", "metric_header"]


def fmt(value: Any) -> str:
    """Numbers with thousands separators; floats with 4 significant decimals."""
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str], title: str | None = None) -> str:
    """A table with a header rule; numeric columns right-aligned."""
    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [
        all(isinstance(row[i], (int, float)) and not isinstance(row[i], bool) for row in rows if row[i] is not None)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    out = [title] if title else []
    out += [line(list(headers)), line(["-" * w for w in widths])] + [line(r) for r in cells]
    return "\n".join(out)


def metric_header(column: str) -> str:
    """A metric's name as a table header: ``recall_at_10`` -> ``recall@10``."""
    return column.replace("_at_", "@").replace("accuracy", "acc").replace("_no_exclusion", " no-excl")
