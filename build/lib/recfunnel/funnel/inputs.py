"""Model inputs for the funnel: a user (from the catalogue, or raw features of a new user) alone for
the user tower, or beside candidate items for a ranker.

A ranker was trained on rows that joined a user's features with an item's; here each candidate
row is rebuilt the same way from the user and item catalogues (encoded as in the shards).
Features that are neither the user's nor the item's (context) are left at index 0 / value 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recfunnel.data.format.catalog import Catalog
from recfunnel.data.format.manifest import Manifest
from recfunnel.data.format.request_encoder import RequestEncoder
from recfunnel.data.format.rows import jagged_take
from recfunnel.errors import DataError

__all__ = ["UserFeatures", "user_from_catalog", "user_from_raw", "tower_inputs", "pair_inputs"]


@dataclass
class UserFeatures:
    """One user's encoded features: sparse name -> int64 ids (one for single-hot), dense name -> value."""

    sparse: dict[str, np.ndarray] = field(default_factory=dict)
    dense: dict[str, float] = field(default_factory=dict)
    index: int = 0  # the user id's index; 0 (OOV) for a new user


def user_from_catalog(users: Catalog, row: int) -> UserFeatures:
    sparse = {key: values[row : row + 1] for key, values in users.single.items()}
    for key, (lengths, values) in users.multi.items():
        sparse[key] = jagged_take(lengths, values, np.array([row]))[1]
    return UserFeatures(sparse, {k: float(v[row]) for k, v in users.dense.items()}, int(users.index[row]))


def user_from_raw(
    manifest: Manifest, encoder: RequestEncoder, features: dict[str, Any]
) -> tuple[UserFeatures, list[str]]:
    """A new user's features from raw values (as in the input files); (features, notes on what was
    ignored or not understood). A list for a single-valued feature is an error."""
    role_features = set(manifest.roles.get("user_features", []))
    notes = (
        [f"features {sorted(set(features) - role_features)} are not user features of the model; ignored"]
        if set(features) - role_features
        else []
    )
    dense_names = {f.name for f in manifest.dense}
    out = UserFeatures()
    for name in sorted(role_features):
        value = features.get(name)
        is_list = isinstance(value, (list, tuple))
        if name in dense_names:
            if is_list:
                raise DataError(f"features.{name}: expected a number ({name} is dense), got a list")
            number = pd.to_numeric(pd.Series([value], dtype=object), errors="coerce").iloc[0]
            if value is not None and pd.isna(number):
                notes.append(f"features.{name}: {value!r} is not a number; treated as missing")
            out.dense[name] = float(encoder.encode(pd.DataFrame({name: [number]}), [], [name])[0][0, 0])
        elif manifest.feature(name).multi_hot:
            values = list(value) if is_list else ([] if value is None else [value])
            ids = encoder.indices(name, values) if values else np.zeros(0, np.int64)
            if len(ids) and (ids == 0).any():
                notes.append(
                    f"features.{name}: unknown values {[v for v, i in zip(values, ids) if i == 0][:5]}; ignored"
                )
            out.sparse[name] = np.unique(ids[ids > 0]) if len(ids) else ids
        else:
            if is_list:
                raise DataError(f"features.{name}: expected one value ({name} is not multi-hot), got a list")
            out.sparse[name] = encoder.indices(name, [value])
            if value is not None and out.sparse[name][0] == 0:
                notes.append(f"features.{name}: {value!r} is not a known value; treated as unknown")
    return out, notes


def _sparse_of(user: UserFeatures, user_key: str, key: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(lengths, values) of ``key`` for ``n`` rows of the same user."""
    if key == user_key:
        ids = np.array([user.index], np.int64)
    else:
        ids = user.sparse.get(key, np.array([0], np.int64))
    return np.full(n, len(ids), np.int32), np.tile(ids, n)


def tower_inputs(
    user: UserFeatures, user_key: str, sparse_keys: list[str], dense_names: list[str]
) -> tuple[torch.Tensor, KeyedJaggedTensor]:
    """The user tower's inputs for one user."""
    parts = [_sparse_of(user, user_key, key, 1) for key in sparse_keys]
    dense = torch.tensor([[user.dense.get(name, 0.0) for name in dense_names]], dtype=torch.float32)
    return dense, _kjt(sparse_keys, parts, 1)


def _kjt(keys: list[str], parts: list[tuple[np.ndarray, np.ndarray]], n: int) -> KeyedJaggedTensor:
    return KeyedJaggedTensor(
        keys=keys,
        values=torch.from_numpy(np.concatenate([p[1] for p in parts]).astype(np.int64)),
        lengths=torch.from_numpy(np.concatenate([p[0] for p in parts]).astype(np.int32)),
        stride=n,
    )


def pair_inputs(
    manifest: Manifest, user: UserFeatures, items: Catalog, item_rows: np.ndarray
) -> tuple[torch.Tensor, KeyedJaggedTensor]:
    """A ranker's inputs for (user, item) rows, every feature of ``manifest`` in its order.
    ``item_rows``: catalogue positions (-1 for items the catalogue lacks: OOV features)."""
    n = len(item_rows)
    known = item_rows >= 0
    rows = np.where(known, item_rows, 0)
    user_key = manifest.roles["user"]
    parts = []
    for key in manifest.sparse_keys:
        if key == user_key or key in user.sparse:
            parts.append(_sparse_of(user, user_key, key, n))
        elif key in items.single:
            parts.append((np.ones(n, np.int32), np.where(known, items.single[key][rows], 0)))
        elif key in items.multi:
            lengths, values = items.multi[key]
            taken_lengths, taken = jagged_take(lengths, values, rows)
            if not known.all():  # unknown items: no values
                keep = np.repeat(known, taken_lengths)
                taken, taken_lengths = taken[keep], np.where(known, taken_lengths, 0)
            parts.append((taken_lengths, taken))
        else:  # a context feature: neither the user's nor the item's
            parts.append((np.ones(n, np.int32), np.zeros(n, np.int64)))
    dense = np.zeros((n, len(manifest.dense)), np.float32)
    for j, f in enumerate(manifest.dense):
        if f.name in user.dense:
            dense[:, j] = user.dense[f.name]
        elif f.name in items.dense:
            dense[:, j] = np.where(known, items.dense[f.name][rows], 0.0)
    return torch.from_numpy(dense), _kjt(manifest.sparse_keys, parts, n)
