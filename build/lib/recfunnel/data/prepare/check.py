"""Checking a source's raw tables column by column; the first problem raises :class:`DataError`
naming the file, line and column."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from recfunnel.data.prepare.columns import Table, to_ids, to_numbers, to_timestamps
from recfunnel.data.prepare.tables import Checked, Feature, InteractionData
from recfunnel.errors import DataError

__all__ = ["check_interactions"]


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
    return Checked(
        user_id.reset_index(drop=True), item_id.reset_index(drop=True), rating, label, timestamp, context, users, items
    )


def _check_ratings(t: Table, rating: np.ndarray, bounds: tuple[float, float] | None, step: float | None) -> None:
    if bounds is not None:
        lo, hi = bounds
        _raise_first(
            t, (rating < lo) | (rating > hi), lambda v: f"{t.label('rating')} {v:g} is outside {lo:g}-{hi:g}", rating
        )
    if step is not None:
        steps = rating / step
        _raise_first(
            t,
            np.abs(steps - np.round(steps)) > 1e-6,
            lambda v: f"{t.label('rating')} {v:g} is not a multiple of {step:g}",
            rating,
        )


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


def _check_entities(
    t: Table | None, key: str, features: list[Feature], numeric_ids: tuple[str, ...]
) -> pd.DataFrame | None:
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
        raise DataError(
            f"{t.at(pos)}: {t.label(key)} {value!r} appears again (first at {t.unit} {int(t.frame.index[first])})"
        )
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
