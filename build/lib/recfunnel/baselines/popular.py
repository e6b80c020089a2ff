"""Most-popular: every user gets the items with the most training interactions."""

from __future__ import annotations

import time

import numpy as np
import torch

__all__ = ["MostPopular"]


class MostPopular:
    """Scores each item by its (weighted) count of training pairs, the same for every user."""

    def __init__(self) -> None:
        self.popularity: torch.Tensor | None = None  # float32 (n_items + 1,), column 0 (OOV) is 0
        self.fit_seconds = 0.0

    def fit(self, users: np.ndarray, items: np.ndarray, n_items: int, weights: np.ndarray | None = None) -> MostPopular:
        """Count ``items`` int (n,) over item indices 1..n_items; ``users`` (n,) is only checked for length."""
        start = time.perf_counter()
        items = np.asarray(items, np.int64)
        if len(np.asarray(users)) != len(items) or (weights is not None and len(weights) != len(items)):
            raise ValueError(
                f"users, items and weights must have equal lengths, got {len(users)}, {len(items)}, "
                f"{None if weights is None else len(weights)}"
            )
        if len(items) and (items.min() < 0 or items.max() > n_items):
            raise ValueError(f"items: indices must be in [0, {n_items}], got [{items.min()}, {items.max()}]")
        self._set(np.bincount(items, weights=weights, minlength=n_items + 1))
        self.fit_seconds = time.perf_counter() - start
        return self

    @classmethod
    def of(cls, popularity: np.ndarray) -> MostPopular:
        """Fitted to given item popularity (n_items + 1,), e.g. ``data.format.pairs.item_popularity``."""
        model = cls()
        model._set(popularity)
        return model

    def _set(self, counts: np.ndarray) -> None:
        counts = np.asarray(counts, np.float32).copy()
        counts[0] = 0.0  # the OOV bucket is never recommended
        self.popularity = torch.from_numpy(counts)

    def score_users(self, user_idx: np.ndarray) -> torch.Tensor:
        """float32 (b, n_items + 1) for ``user_idx`` int (b,): a read-only broadcast of the counts."""
        if self.popularity is None:
            raise RuntimeError("MostPopular.score_users before fit")
        return self.popularity.expand(len(user_idx), -1)
