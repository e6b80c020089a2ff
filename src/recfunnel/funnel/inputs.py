"""Model inputs for the funnel: users (from the catalogue, or raw features of new users) alone for
the user tower, or beside their candidate items for a ranker; several users at once, so that a
batch of requests goes through each model in one call.

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

__all__ = [
    "UserFeatures",
    "user_from_catalog",
    "user_from_raw",
    "multi_hot_from_raw",
    "tower_inputs",
    "pair_inputs",
]


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
        if name == manifest.roles.get("example_age"):  # not the user's to give: the encoder's "now", as for a request
            out.dense[name] = float(encoder.encode(pd.DataFrame(index=[0]), [], [name])[0][0, 0])
            if features.get(name) is not None:
                notes.append(
                    f"features.{name}: serving asks about now (the end of the known data); the value given is ignored"
                )
            continue
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
            out.sparse[name] = multi_hot_from_raw(manifest, encoder, name, value, notes)
        else:
            if is_list:
                raise DataError(f"features.{name}: expected one value ({name} is not multi-hot), got a list")
            out.sparse[name] = encoder.indices(name, [value])
            if value is not None and out.sparse[name][0] == 0:
                notes.append(f"features.{name}: {value!r} is not a known value; treated as unknown")
    return out, notes


def multi_hot_from_raw(
    manifest: Manifest, encoder: RequestEncoder, name: str, value: Any, notes: list[str]
) -> np.ndarray:
    """A multi-hot feature's raw value (a list, one value or None) as the shards hold it: a set of
    known ids, or for the history a sequence, the latest first, at most its length. Unknown values
    are noted in ``notes`` and left out."""
    values = list(value) if isinstance(value, (list, tuple)) else ([] if value is None else [value])
    ids = encoder.indices(name, values) if values else np.zeros(0, np.int64)
    if len(ids) and (ids == 0).any():
        notes.append(f"features.{name}: unknown values {[v for v, i in zip(values, ids) if i == 0][:5]}; ignored")
    if name == manifest.roles.get("history"):
        return ids[ids > 0][: manifest.feature(name).max_len]
    return np.unique(ids[ids > 0]) if len(ids) else ids


def _user_ids(user: UserFeatures, user_key: str, key: str) -> np.ndarray:
    """The ids of ``key`` for one user (its id's index for the id feature; OOV when unknown)."""
    if key == user_key:
        return np.array([user.index], np.int64)
    return user.sparse.get(key, np.array([0], np.int64))


def _repeated(users: list[UserFeatures], user_key: str, key: str, counts: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(lengths, values) of user feature ``key``, each user's ids repeated on ``counts[u]`` rows."""
    ids = [_user_ids(u, user_key, key) for u in users]
    lengths = np.repeat(np.array([len(i) for i in ids], np.int32), counts)
    if not ids:
        values = np.zeros(0, np.int64)
    elif all(len(i) == 1 for i in ids):  # one id a user (most features): a single repeat
        values = np.repeat(np.concatenate(ids), counts)
    else:
        values = np.concatenate([np.tile(i, n) for i, n in zip(ids, counts)])
    return lengths, values


def tower_inputs(
    users: list[UserFeatures], user_key: str, sparse_keys: list[str], dense_names: list[str]
) -> tuple[torch.Tensor, KeyedJaggedTensor]:
    """The user tower's inputs for ``users``, one row each."""
    ones = [1] * len(users)
    parts = [_repeated(users, user_key, key, ones) for key in sparse_keys]
    dense = torch.tensor([[u.dense.get(name, 0.0) for name in dense_names] for u in users], dtype=torch.float32)
    return dense.reshape(len(users), len(dense_names)), _kjt(sparse_keys, parts, len(users))


def _kjt(keys: list[str], parts: list[tuple[np.ndarray, np.ndarray]], n: int) -> KeyedJaggedTensor:
    return KeyedJaggedTensor(
        keys=keys,
        values=torch.from_numpy(np.concatenate([p[1] for p in parts]).astype(np.int64)),
        lengths=torch.from_numpy(np.concatenate([p[0] for p in parts]).astype(np.int32)),
        stride=n,
    )


def pair_inputs(
    manifest: Manifest,
    users: list[UserFeatures],
    items: Catalog,
    item_rows: list[np.ndarray],
    context: dict[str, np.ndarray] | None = None,
) -> tuple[torch.Tensor, KeyedJaggedTensor]:
    """A ranker's inputs for the (user, item) rows of several users at once: ``users[u]`` beside each
    of ``item_rows[u]`` (catalogue positions; -1 for items the catalogue lacks: OOV features), in
    that order; every feature of ``manifest`` in its order, each row built as in training.
    ``context``: features of each row that are neither the user's nor the item's (the retriever's
    score and rank of a candidate), one value per row (a single-hot one's index, or a dense value)."""
    counts = [len(r) for r in item_rows]
    n = sum(counts)
    all_rows = np.concatenate(item_rows) if item_rows else np.zeros(0, np.int64)
    known = all_rows >= 0
    rows = np.where(known, all_rows, 0)
    user_key = manifest.roles["user"]
    user_keys = {user_key} | {key for u in users for key in u.sparse}
    parts = []
    for key in manifest.sparse_keys:
        if context is not None and key in context:
            parts.append((np.ones(n, np.int32), context[key]))
        elif key in user_keys:
            parts.append(_repeated(users, user_key, key, counts))
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
    starts = np.cumsum([0, *counts])
    for j, f in enumerate(manifest.dense):
        if context is not None and f.name in context:
            dense[:, j] = context[f.name]
        elif any(f.name in u.dense for u in users):
            for u, user in enumerate(users):
                dense[starts[u] : starts[u + 1], j] = user.dense.get(f.name, 0.0)
        elif f.name in items.dense:
            dense[:, j] = np.where(known, items.dense[f.name][rows], 0.0)
    return torch.from_numpy(dense), _kjt(manifest.sparse_keys, parts, n)
