"""Which of a batch's features a model reads, checked against the dataset before training."""

from __future__ import annotations

import difflib

from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recfunnel.data.format.manifest import Manifest, SparseFeature
from recfunnel.errors import ConfigError

__all__ = ["sparse_features", "select_sparse", "dense_columns"]


def _unknown(field: str, name: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"the dataset has {known}"
    return ConfigError(f"{field}: no feature {name!r} in the dataset; {hint}")


def sparse_features(manifest: Manifest, names: list[str] | None, field: str = "model.features") -> list[SparseFeature]:
    """The dataset's sparse features called ``names`` (all of them for None), in that order."""
    known = [f.name for f in manifest.sparse]
    if names is None:
        names = manifest.sparse_keys
    for name in names:
        if name not in known:
            raise _unknown(field, name, known)
    if not names:
        raise ConfigError(f"{field}: at least one sparse feature is needed")
    return [manifest.feature(n) for n in names]


def dense_columns(manifest: Manifest, names: list[str] | None, field: str = "model.dense_features") -> list[int]:
    """Column positions in ``Batch.dense`` of the dense features ``names`` (all for None)."""
    known = [f.name for f in manifest.dense]
    if names is None:
        return list(range(len(known)))
    for name in names:
        if name not in known:
            raise _unknown(field, name, known)
    return [known.index(n) for n in names]


def select_sparse(features: KeyedJaggedTensor, keys: list[str]) -> KeyedJaggedTensor:
    """The features ``keys`` of a KJT, in that order (the KJT itself when it already is that)."""
    have = features.keys()
    if have == keys:
        return features
    return features.permute([have.index(k) for k in keys])
