"""The types passed between the steps of ``prepare``: feature declarations, a source's raw tables
(:class:`InteractionData`) and the same tables once every column is checked (:class:`Checked`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from recfunnel.data.prepare.columns import Table
from recfunnel.errors import ConfigError

__all__ = ["FEATURE_KINDS", "OWNERS", "RESERVED", "Feature", "InteractionData", "Checked"]

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
