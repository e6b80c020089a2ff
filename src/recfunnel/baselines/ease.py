"""EASE (Steck 2019, "Embarrassingly Shallow Autoencoders for Sparse Data"): an item-item linear
model with a zero diagonal, in closed form.

    G = XᵀX + λI,  P = G⁻¹,  B = I - P · diag(1 / diag(P))   (so B_ij = -P_ij / P_jj, B_jj = 0)

and a user's scores are its binary interaction row times B. The n_items² matrix is held dense,
which is what bounds the catalogue size.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import scipy.sparse as sp
import torch

from recfunnel.errors import RecfunnelError

__all__ = ["EASE", "MAX_ITEMS"]

MAX_ITEMS = 30_000  # a float32 30k x 30k matrix is 3.6 GB; its inverse needs as much again


class EASE:
    """``EASE(l2=...)``: ``l2`` is λ, the ridge penalty added to the Gram matrix's diagonal.

    The default, 500 (Steck's value for MovieLens-20M), is also the best of 100 / 200 / 500 / 1000
    on ml-100k (random 80/20, train items excluded, accuracy at 100: 0.609 / 0.625 / 0.627 / 0.616).
    ``dtype`` (float32 or float64) is that of B and of the scores.
    """

    def __init__(self, l2: float = 500.0, *, dtype: torch.dtype = torch.float32):
        if l2 <= 0:
            raise ValueError(f"l2: {l2}, expected > 0")
        self.l2 = float(l2)
        self.dtype = dtype
        self.weights: torch.Tensor | None = None  # B, (n_items + 1, n_items + 1); row and column 0 are 0
        self.history: sp.csr_matrix | None = None  # X, binary (n_users + 1, n_items + 1)
        self.fit_seconds = 0.0

    def fit(self, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> EASE:
        """Fit on the pairs ``(users, items)`` int (n,) with users in 0..n_users, items in 1..n_items.

        Repeated pairs count once; pairs with item 0 (OOV) are ignored.
        """
        if n_items > MAX_ITEMS:
            raise RecfunnelError(
                f"EASE needs an n_items² matrix: {n_items} items is over its limit of {MAX_ITEMS}; "
                "use most-popular or a two-tower model for this catalogue"
            )
        start = time.perf_counter()
        users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
        if len(users) != len(items):
            raise ValueError(f"users ({len(users)}) and items ({len(items)}) must have equal lengths")
        if len(items) and (items.min() < 0 or items.max() > n_items or users.min() < 0 or users.max() > n_users):
            raise ValueError(f"pairs out of range: users must be in [0, {n_users}], items in [0, {n_items}]")
        keep = items > 0
        x = sp.csr_matrix(
            (np.ones(int(keep.sum()), np.float32), (users[keep], items[keep])), shape=(n_users + 1, n_items + 1)
        )
        x.sum_duplicates()
        x.data[:] = 1.0
        gram = torch.from_numpy((x.T @ x).toarray()).to(self.dtype)  # co-occurrence counts: exact in float32
        gram.diagonal().add_(self.l2)
        p = torch.cholesky_inverse(torch.linalg.cholesky(gram))
        b = -p / p.diagonal()  # column j divided by P_jj
        b.diagonal().zero_()
        b[0, :] = 0.0
        b[:, 0] = 0.0
        self.weights, self.history = b, x
        self.fit_seconds = time.perf_counter() - start
        return self

    def knowing(self, users: np.ndarray, items: np.ndarray) -> EASE:
        """The same fitted weights scoring each user from the pairs ``(users, items)`` instead of
        the training rows: what the user did up to the evaluated moment (training and validation
        rows for the test split), as a model with history sees it at serving. Not refitted."""
        if self.weights is None or self.history is None:
            raise RuntimeError("EASE.knowing before fit")
        users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
        keep = (items > 0) & (items < self.history.shape[1]) & (users < self.history.shape[0])
        rows = sp.csr_matrix(
            (np.ones(int(keep.sum()), np.float32), (users[keep], items[keep])), shape=self.history.shape
        )
        rows.sum_duplicates()
        rows.data[:] = 1.0
        other = copy.copy(self)
        other.history = rows
        return other

    def score_users(self, user_idx: np.ndarray) -> torch.Tensor:
        """Scores (b, n_items + 1) in ``dtype`` for ``user_idx`` int (b,): their training rows times B."""
        if self.weights is None or self.history is None:
            raise RuntimeError("EASE.score_users before fit")
        rows = torch.from_numpy(self.history[np.asarray(user_idx, np.int64)].toarray()).to(self.weights.dtype)
        return rows @ self.weights
