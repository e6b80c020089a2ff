"""Seeded train / val / test splits of interaction rows, as one split code per row.

Three kinds, chosen with ``--split`` (``auto``, the default: ``temporal`` when the data has
timestamps, since a random split trains on a user's future and tests on their past; else ``random``):

``random``    a seeded permutation: exactly ``round(n * test_fraction)`` rows go to test and
              ``round(n * val_fraction)`` to val (at least one each when the fraction is > 0).
``temporal``  per-user leave-last-N-out by timestamp: each user's last N rows go to test and, when
              val is enabled, the N before them to val. Users with too few rows (fewer than
              N + 1, or 2N + 1 with val) stay whole in train, so every test user has a history.
``time``      one global time cut: the latest ``test_fraction`` of rows (by timestamp) go to
              test, the ``val_fraction`` before them to val. Rows sharing the cut timestamp all go
              to the later split, so no train row is as late as a test row.

``--val-fraction 0`` switches val off for every kind (for ``temporal`` any value > 0 switches it on).
Ties in time keep file order (stable sorts), so a split depends only on the data and the seed.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from recfunnel.errors import ConfigError, DataError

__all__ = [
    "SPLITS",
    "TRAIN",
    "VAL",
    "TEST",
    "SPLIT_KINDS",
    "SplitSpec",
    "assign_splits",
    "user_time_order",
    "add_split_arguments",
    "split_kwargs",
]

SPLITS = ("train", "val", "test")  # split code -> name
TRAIN, VAL, TEST = 0, 1, 2
SPLIT_KINDS = ("auto", "random", "temporal", "time")


@dataclass(frozen=True)
class SplitSpec:
    kind: str = "random"
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    leave_last: int = 1
    seed: int = 42

    def __post_init__(self) -> None:
        if self.kind not in SPLIT_KINDS:
            raise ConfigError(f"--split: {self.kind!r} is not one of {', '.join(SPLIT_KINDS)}")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"--{name.replace('_', '-')}: {value} is outside [0, 1)")
        if self.kind != "temporal" and self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError(
                f"--val-fraction {self.val_fraction} + --test-fraction {self.test_fraction} leave no rows for train"
            )
        if self.kind != "temporal" and self.test_fraction == 0.0:
            raise ConfigError(f"--test-fraction: 0 leaves no test split; use a value in (0, 1) for --split {self.kind}")
        if self.leave_last < 1:
            raise ConfigError(f"--leave-last: {self.leave_last}, expected >= 1")

    def resolved(self, has_timestamps: bool) -> SplitSpec:
        """``auto``: ``temporal`` for data with timestamps (a random split would train on a user's
        future and test on their past), else ``random``; another kind as it is."""
        if self.kind != "auto":
            return self
        return dataclasses.replace(self, kind="temporal" if has_timestamps else "random")

    @property
    def has_val(self) -> bool:
        return self.val_fraction > 0

    @property
    def names(self) -> list[str]:
        """The splits this spec writes, in order."""
        return ["train", "val", "test"] if self.has_val else ["train", "test"]


def assign_splits(spec: SplitSpec, users: np.ndarray, timestamps: np.ndarray | None) -> tuple[np.ndarray, dict]:
    """Split code per row (``TRAIN``/``VAL``/``TEST``, int8 (n,)) and the record for ``manifest.split``.

    users: user index per row, int (n,); timestamps: numeric (n,) or None (then only ``random``).
    An enabled split that ends up empty raises :class:`DataError`.
    """
    n = len(users)
    spec = spec.resolved(timestamps is not None)
    if spec.kind == "random":
        codes, info = _random(spec, n)
    elif timestamps is None:
        raise DataError(f"--split {spec.kind} needs timestamps, and the data has none; use --split random")
    elif spec.kind == "temporal":
        codes, info = _temporal(spec, users, timestamps)
    else:
        codes, info = _time_cut(spec, timestamps)
    counts = np.bincount(codes, minlength=3)
    for code in [TRAIN, TEST] + ([VAL] if spec.has_val else []):
        if counts[code] == 0:
            raise DataError(f"split {SPLITS[code]!r} would be empty: {n} rows are too few for {_describe(spec)}")
    record: dict[str, Any] = {
        "kind": spec.kind,
        "seed": spec.seed,
        **info,
        "rows": {SPLITS[c]: int(counts[c]) for c in range(3) if c != VAL or spec.has_val},
    }
    return codes, record


def _random(spec: SplitSpec, n: int) -> tuple[np.ndarray, dict]:
    n_test = _share(n, spec.test_fraction)
    n_val = _share(n, spec.val_fraction)
    perm = np.random.default_rng(spec.seed).permutation(n)
    codes = np.zeros(n, np.int8)
    codes[perm[:n_test]] = TEST
    codes[perm[n_test : n_test + n_val]] = VAL
    return codes, {"val_fraction": spec.val_fraction, "test_fraction": spec.test_fraction}


def _temporal(spec: SplitSpec, users: np.ndarray, timestamps: np.ndarray) -> tuple[np.ndarray, dict]:
    n, k = len(users), spec.leave_last
    order = user_time_order(users, timestamps)
    sorted_users = users[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    sizes = np.diff(np.r_[starts, n])
    size_of_row = np.repeat(sizes, sizes)
    from_end = np.repeat(starts + sizes, sizes) - 1 - np.arange(n)  # 0 = the user's latest row
    min_rows = k * (2 if spec.has_val else 1) + 1
    eligible = size_of_row >= min_rows
    codes_sorted = np.full(n, TRAIN, np.int8)
    codes_sorted[eligible & (from_end < k)] = TEST
    if spec.has_val:
        codes_sorted[eligible & (from_end >= k) & (from_end < 2 * k)] = VAL
    codes = np.empty(n, np.int8)
    codes[order] = codes_sorted
    kept = int((sizes < min_rows).sum())
    return codes, {"leave_last": k, "val": spec.has_val, "min_rows_per_user": min_rows, "users_kept_in_train": kept}


def user_time_order(users: np.ndarray, timestamps: np.ndarray | None) -> np.ndarray:
    """Row order by user, then time, ties in file order: int64 (n,). users: ints >= 0 (n,)."""
    if timestamps is None:
        return np.argsort(users, kind="stable")
    if len(users) and np.issubdtype(timestamps.dtype, np.integer):
        lo, span = int(timestamps.min()), int(timestamps.max()) - int(timestamps.min()) + 1
        if (int(users.max()) + 1) * span < 2**62:  # one stable sort of a combined key: ~2x lexsort
            return np.argsort(users.astype(np.int64) * span + (timestamps - lo), kind="stable")
    return np.lexsort((timestamps, users))


def _time_cut(spec: SplitSpec, timestamps: np.ndarray) -> tuple[np.ndarray, dict]:
    n = len(timestamps)
    ts_sorted = np.sort(timestamps, kind="stable")
    n_test = _share(n, spec.test_fraction)
    test_cut = ts_sorted[n - n_test]
    codes = np.zeros(n, np.int8)
    codes[timestamps >= test_cut] = TEST
    info: dict[str, Any] = {
        "val_fraction": spec.val_fraction,
        "test_fraction": spec.test_fraction,
        "test_cut": _plain(test_cut),
    }
    if spec.has_val:
        n_val = _share(n, spec.val_fraction)
        val_cut = ts_sorted[max(n - n_test - n_val, 0)]
        if val_cut == test_cut:
            raise DataError(
                f"--split time: the val and test cuts fall on the same timestamp {_plain(test_cut)}; "
                "too many rows share it (use --split random or temporal)"
            )
        codes[(timestamps >= val_cut) & (timestamps < test_cut)] = VAL
        info["val_cut"] = _plain(val_cut)
    return codes, info


def _share(n: int, fraction: float) -> int:
    """Rows for a split of ``fraction``: rounded, at least 1 when the fraction is > 0."""
    return max(1, int(round(n * fraction))) if fraction > 0 else 0


def _plain(value: Any) -> int | float:
    """A numpy scalar as a JSON-friendly int (whole numbers) or float."""
    value = float(value)
    return int(value) if value.is_integer() else value


def _describe(spec: SplitSpec) -> str:
    if spec.kind == "temporal":
        return f"--split temporal --leave-last {spec.leave_last} (no user has enough rows)"
    return f"--split {spec.kind} with --val-fraction {spec.val_fraction} --test-fraction {spec.test_fraction}"


def add_split_arguments(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """``--split``, ``--val-fraction``, ``--test-fraction``, ``--leave-last``."""
    g = parser.add_argument_group("split")
    g.add_argument(
        "--split",
        choices=SPLIT_KINDS,
        default=default,
        help=f"auto: temporal when the data has timestamps, else random | random rows | temporal: each "
        f"user's last --leave-last rows -> test, as many before them -> val | time: one global time cut "
        f"(default {default})",
    )
    g.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share of rows in val (random, time); 0 = no val split, for every kind (default 0.1)",
    )
    g.add_argument("--test-fraction", type=float, default=0.1, help="share of rows in test (random, time; default 0.1)")
    g.add_argument(
        "--leave-last",
        type=int,
        default=1,
        help="temporal: rows per user for test, and as many before them for val (default 1)",
    )


def split_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The split options of parsed CLI arguments (and ``--seed``), as ``prepare_*`` keyword arguments."""
    return {
        "split": args.split,
        "val_fraction": args.val_fraction,
        "test_fraction": args.test_fraction,
        "leave_last": args.leave_last,
        "seed": args.seed,
    }
