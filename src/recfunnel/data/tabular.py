"""The shared pipeline of user-item interaction datasets: check -> split -> label -> encode -> write.

Sources (MovieLens, a user's CSV/Parquet file, synthetic tastes) read their files into an
:class:`InteractionData`: an interactions table with standard columns ``user_id``, ``item_id`` and
optionally ``rating``, ``label``, ``timestamp`` and row-level ("context") feature columns, plus
optional per-user and per-item tables. :func:`prepare_interaction_dataset` turns it into a dataset
folder (see schema.py), written to a temp folder that becomes ``out`` only once complete::

    manifest.json          kind "interactions"; roles name the user/item id features
    vocab/<name>.parquet   user_id, item_id and every categorical feature (index 0 = OOV)
    users.parquet          user_index, user_id, user features encoded
    items.parquet          item_index, item_id, title (if known), item features encoded
    pairs/<split>.parquet  user_index, item_index, label[, rating][, timestamp], by user then time
    <split>/               MDS block shards; rows in a seeded random order

Encoding: single-hot indices int64, multi-hot lists of int64, dense float32 standardised with the
mean/std of train entities (user/item features) or train rows (context features); a missing dense
value becomes the mean (0 after standardising).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from recfunnel.data.columns import Table, to_ids, to_numbers, to_timestamps
from recfunnel.data.encode import Encoded, encode_features
from recfunnel.data.labels import LabelSpec, check_label_rule, derive_labels
from recfunnel.data.schema import Manifest
from recfunnel.data.shards import atomic_output_dir, check_output
from recfunnel.data.splits import SplitSpec, assign_splits
from recfunnel.data.tabular_write import write_dataset
from recfunnel.errors import ConfigError, DataError

__all__ = ["FEATURE_KINDS", "OWNERS", "RESERVED", "Feature", "InteractionData", "Checked",
           "prepare_interaction_dataset", "check_interactions"]

FEATURE_KINDS = ("dense", "categorical", "multi_hot")
OWNERS = ("user", "item", "context")
RESERVED = ("user_id", "item_id", "rating", "label", "timestamp", "title")


@dataclass(frozen=True)
class Feature:
    """A feature column: where it lives (``owner``) and how it is encoded (``kind``).

    user/item features are columns of the users/items table, context features of the interactions.
    multi_hot cells hold lists (or None); ``missing_ok`` lets a dense feature have gaps (-> the mean).
    """

    name: str
    kind: str
    owner: str
    missing_ok: bool = False

    def __post_init__(self) -> None:
        if self.kind not in FEATURE_KINDS:
            raise ConfigError(f"feature {self.name!r}: kind {self.kind!r} is not one of {', '.join(FEATURE_KINDS)}")
        if self.owner not in OWNERS:
            raise ConfigError(f"feature {self.name!r}: owner {self.owner!r} is not one of {', '.join(OWNERS)}")
        if self.name in RESERVED:
            raise ConfigError(f"feature {self.name!r}: the name is reserved ({', '.join(RESERVED)})")


@dataclass
class InteractionData:
    """Raw tables of one source; the frames' index holds file line numbers (see columns.Table)."""

    inter: Table
    users: Table | None = None
    items: Table | None = None
    features: list[Feature] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)
    rating_range: tuple[float, float] | None = None
    rating_step: float | None = None  # e.g. 0.5: ratings must be multiples of it
    numeric_ids: tuple[str, ...] = ()  # id columns that must be numbers (text there is an error)


@dataclass
class Checked:
    """Validated columns: ids int64 or str, numbers float64, timestamps int64/float64 seconds."""

    user_id: pd.Series  # (n,)
    item_id: pd.Series  # (n,)
    rating: np.ndarray | None  # float64 (n,)
    label: np.ndarray | None  # float64 (n,), 0/1
    timestamp: np.ndarray | None  # (n,)
    context: pd.DataFrame  # context feature columns, (n, C), RangeIndex
    users: pd.DataFrame | None  # index user_id (unique), user feature columns [+ nothing else]
    items: pd.DataFrame | None  # index item_id (unique), item feature columns [+ title]


def prepare_interaction_dataset(data: InteractionData, out: str | Path, *, labels: LabelSpec = LabelSpec(),
                                split: SplitSpec = SplitSpec(), block_rows: int = 4096,
                                compression: str | None = None, overwrite: bool = False, quiet: bool = False,
                                evaluate: Callable[[Path, Manifest], dict] | None = None) -> Manifest:
    """Check, split, label, encode and write ``data`` to the dataset folder ``out``; return its manifest.

    evaluate: called with the finished temp folder and manifest before the rename; its dict is
    merged into ``manifest.extra`` (e.g. the synthetic ground truth's recall).
    """
    check_output(out, overwrite, block_rows)
    checked = check_interactions(data)
    check_label_rule(labels, checked.rating is not None, data.inter.name)
    user_codes = pd.factorize(checked.user_id)[0]
    codes, split_record = assign_splits(split, user_codes, checked.timestamp)
    label_array, label_list = derive_labels(labels, checked.rating, checked.label, user_codes, codes, data.inter.name)
    enc = encode_features(checked, data.features, codes)
    manifest = Manifest(kind="interactions", dense=enc.dense, sparse=enc.sparse, labels=label_list, splits={},
                        split=split_record, block_rows=block_rows, source=data.source,
                        roles=_roles(data.features, checked.timestamp is not None),
                        extra=_extra(data, enc, labels, len(codes)))
    with atomic_output_dir(out, overwrite) as tmp:
        manifest.splits = write_dataset(tmp, enc, checked, label_array, label_list, codes, split, block_rows,
                                        compression, quiet)
        if evaluate is not None:
            manifest.extra.update(evaluate(tmp, manifest))
        manifest.save(tmp)
    return manifest


def check_interactions(data: InteractionData) -> Checked:
    """Validate every table of ``data``; the first problem raises :class:`DataError` naming file and line."""
    t = data.inter
    rating = to_numbers(t, "rating") if "rating" in t.frame.columns else None
    if rating is not None:
        _check_ratings(t, rating, data.rating_range, data.rating_step)
    label = to_numbers(t, "label") if "label" in t.frame.columns else None
    if label is not None:
        _raise_first(t, ~np.isin(label, (0.0, 1.0)), lambda v: f"{t.label('label')} {v:g} is not 0 or 1", label)
    timestamp = to_timestamps(t, "timestamp") if "timestamp" in t.frame.columns else None
    user_id, item_id = (to_ids(t, key, numeric=key in data.numeric_ids) for key in ("user_id", "item_id"))
    context = _check_features(t, [f for f in data.features if f.owner == "context"])
    users = _check_entities(data.users, "user_id", [f for f in data.features if f.owner == "user"], data.numeric_ids)
    items = _check_entities(data.items, "item_id", [f for f in data.features if f.owner == "item"], data.numeric_ids)
    user_id, users = _same_id_type(user_id, users)
    item_id, items = _same_id_type(item_id, items)
    return Checked(user_id.reset_index(drop=True), item_id.reset_index(drop=True), rating, label, timestamp,
                   context, users, items)


def _check_ratings(t: Table, rating: np.ndarray, bounds: tuple[float, float] | None, step: float | None) -> None:
    if bounds is not None:
        lo, hi = bounds
        _raise_first(t, (rating < lo) | (rating > hi), lambda v: f"{t.label('rating')} {v:g} is outside {lo:g}-{hi:g}",
                     rating)
    if step is not None:
        steps = rating / step
        _raise_first(t, np.abs(steps - np.round(steps)) > 1e-6,
                     lambda v: f"{t.label('rating')} {v:g} is not a multiple of {step:g}", rating)


def _check_features(t: Table, features: list[Feature]) -> pd.DataFrame:
    """Feature columns of ``t``: dense -> float64 (NaN = missing), others as they are; RangeIndex."""
    out = {}
    for f in features:
        if f.name not in t.frame.columns:
            raise DataError(f"{t.name}: no column {f.name!r} for {f.owner} feature {f.name!r}")
        if f.kind == "dense":
            out[f.name] = to_numbers(t, f.name, missing_ok=f.missing_ok)
        else:
            out[f.name] = t.frame[f.name].to_numpy(dtype=object) if f.kind == "multi_hot" else t.frame[f.name]
    frame = pd.DataFrame({k: (v.to_numpy() if isinstance(v, pd.Series) else v) for k, v in out.items()})
    return frame if features else pd.DataFrame(index=pd.RangeIndex(len(t.frame)))


def _check_entities(t: Table | None, key: str, features: list[Feature],
                    numeric_ids: tuple[str, ...]) -> pd.DataFrame | None:
    """A users/items table indexed by its (unique) id, with its feature columns (and title)."""
    if t is None:
        if features:
            raise DataError(f"{features[0].owner} features {[f.name for f in features]} need a {key[:-3]}s table")
        return None
    if key not in t.frame.columns:
        raise DataError(f"{t.name}: no column {key!r}")
    ids = to_ids(t, key, numeric=key in numeric_ids)
    dup = ids.duplicated(keep="first").to_numpy()
    if dup.any():
        pos = int(np.flatnonzero(dup)[0])
        first = int(np.flatnonzero((ids == ids.iloc[pos]).to_numpy())[0])
        value = ids.iloc[pos].item() if isinstance(ids.iloc[pos], np.generic) else ids.iloc[pos]
        raise DataError(f"{t.at(pos)}: {t.label(key)} {value!r} appears again (first at {t.unit} "
                        f"{int(t.frame.index[first])})")
    frame = _check_features(t, features)
    if "title" in t.frame.columns:
        frame["title"] = t.frame["title"].astype(str).to_numpy()
    frame.index = pd.Index(ids.to_numpy(), name=key)
    return frame


def _same_id_type(ids: pd.Series, table: pd.DataFrame | None) -> tuple[pd.Series, pd.DataFrame | None]:
    """Ids of interactions and of their table compare as strings when one side is text."""
    if table is None or (pd.api.types.is_integer_dtype(ids) == pd.api.types.is_integer_dtype(table.index)):
        return ids, table
    table = table.copy()
    table.index = table.index.astype(str)
    return ids.astype(str), table


def _raise_first(t: Table, bad: np.ndarray, message: Callable[[Any], str], values: np.ndarray) -> None:
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise DataError(f"{t.at(pos)}: {message(values[pos])}")


def _roles(features: list[Feature], has_timestamp: bool) -> dict[str, Any]:
    owned = {o: [f.name for f in features if f.owner == o] for o in OWNERS}
    return {"user": "user_id", "item": "item_id", "user_features": owned["user"], "item_features": owned["item"],
            "context_features": owned["context"], "timestamp": has_timestamp}


def _extra(data: InteractionData, enc: Encoded, labels: LabelSpec, rows: int) -> dict[str, Any]:
    extra: dict[str, Any] = {"rows": rows, "users": enc.user_vocab.cardinality - 1,
                             "items": enc.item_vocab.cardinality - 1, "dense_stats": enc.stats}
    if data.rating_range is not None:
        extra["rating_range"] = list(data.rating_range)
    if labels.rule == "user-mean":
        extra["user_mean_on"] = labels.user_mean_on
    return extra
