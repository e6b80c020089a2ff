"""Your own user-item interactions (CSV, TSV or Parquet) -> an interactions dataset.

The file needs ``user_id`` and ``item_id`` columns (ids: whole numbers >= 0, or text), and may have
``rating`` (explicit feedback), ``label`` (0/1), ``timestamp`` (seconds, or date/time text) and any
other feature columns. A file with neither rating nor label is implicit feedback: every row is a
positive. Columns named differently can be renamed (``--rename userId=user_id``).

Every other column is a feature. By default a float column is dense, an integer, text or true/false
column is categorical and a list column (Parquet) is multi-hot; --dense / --categorical /
--multi-hot override that (multi-hot text cells are split on --list-sep). Features describe the
interaction (context) unless named by --user-features / --item-features, which take each user's
(item's) value from its latest row; or pass whole --users / --items tables keyed by user_id /
item_id (an items table may also have a ``title``). Items only in --items are still in the catalog.

With timestamps, prepare adds two user features: ``history`` (--history) and, in a split in time,
``example_age`` (a row's days before the end of the training data; serving asks about now), so
these two names cannot be columns of the file.

Example::

    recfunnel prepare interactions --input clicks.parquet --item-features category,price \\
        --split temporal --out data/clicks
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from recfunnel.data.format.manifest import Manifest
from recfunnel.data.format.shards import check_output
from recfunnel.data.prepare.columns import Table, closest_name, file_record, read_table, require_columns, to_timestamps
from recfunnel.data.prepare.dataset import prepare_interaction_dataset
from recfunnel.data.prepare.history import HISTORY_LENGTH, add_history_argument
from recfunnel.data.prepare.labels import LabelSpec, add_label_arguments, label_kwargs
from recfunnel.data.prepare.splits import SplitSpec, add_split_arguments, split_kwargs
from recfunnel.data.prepare.tables import RESERVED, Feature, InteractionData
from recfunnel.errors import ConfigError, DataError

__all__ = ["HELP", "add_arguments", "run", "prepare_interactions"]

HELP = "your own user-item interactions from a CSV or Parquet file"
EXPECTED = "user_id, item_id and optionally rating or label, timestamp, feature columns"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, metavar="FILE", help="interactions: .csv, .tsv or .parquet")
    parser.add_argument("--users", metavar="FILE", help="optional table of user features, keyed by user_id")
    parser.add_argument("--items", metavar="FILE", help="optional table of item features (and title), keyed by item_id")
    g = parser.add_argument_group("columns")
    g.add_argument(
        "--rename",
        type=_pairs,
        default={},
        metavar="OLD=NEW,...",
        help="rename columns of every file, e.g. userId=user_id,movieId=item_id",
    )
    g.add_argument(
        "--user-features",
        type=_names,
        default=[],
        metavar="COLS",
        help="columns of --input that describe the user (each user's latest value is kept)",
    )
    g.add_argument(
        "--item-features",
        type=_names,
        default=[],
        metavar="COLS",
        help="columns of --input that describe the item (each item's latest value is kept)",
    )
    g.add_argument("--dense", type=_names, default=[], metavar="COLS", help="numeric features (standardised)")
    g.add_argument("--categorical", type=_names, default=[], metavar="COLS", help="categorical features (vocabulary)")
    g.add_argument("--multi-hot", type=_names, default=[], metavar="COLS", help="list features (vocabulary per value)")
    g.add_argument("--list-sep", default="|", help="separator of values in multi-hot text cells (default |)")
    g.add_argument("--ignore", type=_names, default=[], metavar="COLS", help="columns to leave out")
    g.add_argument(
        "--rating-range",
        type=_range,
        default=None,
        metavar="MIN,MAX",
        help="reject ratings outside [MIN, MAX], e.g. 1,5",
    )
    add_label_arguments(parser)
    add_split_arguments(parser)
    add_history_argument(parser)


def run(args: argparse.Namespace) -> Manifest:
    return prepare_interactions(
        args.input,
        args.out,
        users=args.users,
        items=args.items,
        rename=args.rename,
        user_features=args.user_features,
        item_features=args.item_features,
        dense=args.dense,
        categorical=args.categorical,
        multi_hot=args.multi_hot,
        list_sep=args.list_sep,
        ignore=args.ignore,
        rating_range=args.rating_range,
        **label_kwargs(args),
        **split_kwargs(args),
        history=args.history,
        block_rows=args.block_rows,
        compression=args.compression,
        overwrite=args.overwrite,
        quiet=args.quiet,
    )


def prepare_interactions(
    input: str | Path,
    out: str | Path,
    *,
    users: str | Path | None = None,
    items: str | Path | None = None,
    rename: dict[str, str] | None = None,
    user_features: Sequence[str] = (),
    item_features: Sequence[str] = (),
    dense: Sequence[str] = (),
    categorical: Sequence[str] = (),
    multi_hot: Sequence[str] = (),
    list_sep: str = "|",
    ignore: Sequence[str] = (),
    rating_range: tuple[float, float] | None = None,
    label: str = "auto",
    threshold: float = 4.0,
    user_mean_on: str = "train",
    split: str = "auto",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    leave_last: int = 1,
    seed: int = 42,
    history: int = HISTORY_LENGTH,
    block_rows: int = 4096,
    compression: str | None = None,
    overwrite: bool = False,
    quiet: bool = False,
) -> Manifest:
    """Prepare the interactions file ``input`` into the dataset folder ``out``; return its manifest.

    Options mirror the CLI flags (lists instead of comma-separated names, a dict for ``rename``).
    """
    labels = LabelSpec(rule=label, threshold=threshold, user_mean_on=user_mean_on)
    spec = SplitSpec(
        kind=split, val_fraction=val_fraction, test_fraction=test_fraction, leave_last=leave_last, seed=seed
    )
    check_output(out, overwrite, block_rows)
    if rating_range is not None and not rating_range[0] <= rating_range[1]:
        raise ConfigError(f"--rating-range: {rating_range[0]:g},{rating_range[1]:g} has MIN above MAX")
    kinds = _kind_options(dense, categorical, multi_hot)
    data = _read(
        Path(input), users, items, rename or {}, list(user_features), list(item_features), kinds, list_sep, list(ignore)
    )
    data.rating_range = rating_range
    return prepare_interaction_dataset(
        data,
        out,
        labels=labels,
        split=spec,
        block_rows=block_rows,
        compression=compression,
        overwrite=overwrite,
        quiet=quiet,
        history=history,
    )


def _read(
    path: Path,
    users_path: str | Path | None,
    items_path: str | Path | None,
    rename: dict[str, str],
    user_cols: list[str],
    item_cols: list[str],
    kinds: dict[str, str],
    sep: str,
    ignore: list[str],
) -> InteractionData:
    inter = _load(path, rename)
    hint = "(pass --rename {near}={col})"
    require_columns(inter, ["user_id", "item_id"], EXPECTED, hint)
    if users_path and user_cols:
        raise ConfigError("--user-features: pass either --users FILE or --user-features, not both")
    if items_path and item_cols:
        raise ConfigError("--item-features: pass either --items FILE or --item-features, not both")
    _known([inter], user_cols + item_cols, "--user-features/--item-features")
    users = _entity_file(users_path, "user_id", rename, hint) if users_path else _latest(inter, "user_id", user_cols)
    items = _entity_file(items_path, "item_id", rename, hint) if items_path else _latest(inter, "item_id", item_cols)
    _known([t for t in (inter, users, items) if t is not None], ignore, "--ignore")
    free = [c for c in inter.frame.columns if c not in RESERVED and c not in ignore]
    context = [c for c in free if c not in user_cols + item_cols]
    tables = {"user": users, "item": items, "context": inter}
    columns = {
        "user": _feature_columns(users, "user_id", ignore),
        "item": _feature_columns(items, "item_id", ignore),
        "context": context,
    }
    _check_kind_names(kinds, [c for cols in columns.values() for c in cols])
    features = []
    for owner, cols in columns.items():
        table = tables[owner]
        for col in cols:  # only a table that exists has feature columns
            assert table is not None
            kind = kinds.get(col) or _infer_kind(table.frame[col])
            if kind == "multi_hot":
                table.frame[col] = _as_lists(table.frame[col], sep)
            features.append(Feature(col, kind, owner))
    _unique_names(features)
    files = [path] + [Path(p) for p in (users_path, items_path) if p]
    source = {"kind": "interactions", "files": [file_record(f) for f in files]}
    return InteractionData(inter, users, items, features, source)


def _load(path: Path, rename: dict[str, str]) -> Table:
    table = read_table(path)
    table.frame.columns = [str(c) for c in table.frame.columns]
    table.rename(rename)
    return table


def _entity_file(path: str | Path, key: str, rename: dict[str, str], hint: str) -> Table:
    table = _load(Path(path), rename)
    require_columns(table, [key], f"{key} and {key[:-3]} feature columns", hint)
    return table


def _latest(inter: Table, key: str, cols: list[str]) -> Table | None:
    """Per user (item), its latest row's values of ``cols``: by timestamp, else by file order."""
    if not cols:
        return None
    frame = inter.frame[[key] + cols]
    if "timestamp" in inter.frame.columns:
        frame = frame.iloc[np.argsort(to_timestamps(inter, "timestamp"), kind="stable")]
    return Table(inter.name, frame.drop_duplicates(key, keep="last").copy(), inter.unit, dict(inter.aliases))


def _feature_columns(table: Table | None, key: str, ignore: list[str]) -> list[str]:
    if table is None:
        return []
    return [c for c in table.frame.columns if c != key and c not in ignore and not (key == "item_id" and c == "title")]


def _infer_kind(col: pd.Series) -> str:
    """float -> dense; lists -> multi_hot; int, bool, text -> categorical."""
    first = col.dropna()
    if len(first) and isinstance(first.iloc[0], (list, tuple, np.ndarray)):
        return "multi_hot"
    if pd.api.types.is_float_dtype(col):
        return "dense"
    return "categorical"


def _as_lists(col: pd.Series, sep: str) -> np.ndarray:
    """Multi-hot cells as lists: lists stay, text is split on ``sep``, a single value becomes [value]."""
    values = col.to_numpy(dtype=object)
    first = col.dropna()
    if len(first) and isinstance(first.iloc[0], (list, tuple, np.ndarray)):
        return values
    text = col.astype(str).where(col.notna())
    return text.str.split(sep, regex=False).to_numpy(dtype=object)


def _kind_options(dense: Sequence[str], categorical: Sequence[str], multi_hot: Sequence[str]) -> dict[str, str]:
    kinds: dict[str, str] = {}
    for kind, names in (("dense", dense), ("categorical", categorical), ("multi_hot", multi_hot)):
        for name in names:
            if name in kinds:
                flag, other = kind.replace("_", "-"), kinds[name].replace("_", "-")
                raise ConfigError(f"--{flag}: column {name!r} is already --{other}")
            kinds[name] = kind
    return kinds


def _known(tables: list[Table], names: list[str], option: str) -> None:
    """Every name is a column of one of ``tables``."""
    columns = [c for t in tables for c in t.frame.columns]
    for name in names:
        if name not in columns:
            near = closest_name(name, columns)
            guess = f"; did you mean {near!r}?" if near else ""
            raise DataError(f"{option}: {' / '.join(t.name for t in tables)} has no column {name!r}{guess}")


def _check_kind_names(kinds: dict[str, str], features: list[str]) -> None:
    for name, kind in kinds.items():
        if name not in features:
            near = closest_name(name, features)
            guess = f"; did you mean {near!r}?" if near else ""
            raise DataError(
                f"--{kind.replace('_', '-')}: no feature column {name!r} "
                f"(feature columns: {', '.join(features) or 'none'}){guess}"
            )


def _unique_names(features: list[Feature]) -> None:
    seen: dict[str, str] = {}
    for f in features:
        if f.name in seen:
            raise DataError(
                f"feature {f.name!r} is both a {seen[f.name]} and a {f.owner} column; rename one "
                "(--rename applies to every file) or --ignore it"
            )
        seen[f.name] = f.owner


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def _pairs(text: str) -> dict[str, str]:
    out = {}
    for part in _names(text):
        old, eq, new = part.partition("=")
        if not eq or not old.strip() or not new.strip():
            raise argparse.ArgumentTypeError(f"{part!r} is not OLD=NEW")
        out[old.strip()] = new.strip()
    return out


def _range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not MIN,MAX (e.g. 1,5)") from None
    if lo > hi:
        raise argparse.ArgumentTypeError(f"{text!r}: MIN is above MAX")
    return lo, hi
