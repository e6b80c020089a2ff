"""Raw feature values of requests -> model inputs, exactly as `recfunnel prepare` encoded them.

    encoder = RequestEncoder(manifest, model_dir)          # model_dir holds vocab/<feature>.parquet
    dense, kjt = encoder.encode(pd.DataFrame({"int_0": [3, None], "cat_0": [7, 12], "multi_0": ["1|4", [2]]}))

Sparse features follow their manifest ``encoding``: ``vocab`` (the saved vocabulary; unseen or
missing values -> 0, the OOV bucket), ``hash`` (:func:`hash_encode`) or ``index`` (the value is the
index; outside ``[0, cardinality)`` -> 0). Multi-hot cells are lists or ``"a|b"`` text. Dense features
get the manifest's ``transform`` (``none``, ``log1p``, ``standardize(mean=.., std=..)``); missing -> 0.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recfunnel.data.format.manifest import OOV_INDEX, Manifest, SparseFeature
from recfunnel.data.format.vocab import Vocab, hash_encode
from recfunnel.errors import DataError

__all__ = ["RequestEncoder", "dense_transform", "explode_lists"]

LIST_SEP = "|"
_CALL = re.compile(r"^\s*(\w+)\s*(?:\((.*)\))?\s*$")


def dense_transform(name: str, transform: str):
    """The function (float64 (n,) with NaN for missing -> float32 (n,)) that ``transform`` names."""
    match = _CALL.match(transform)
    kind, args = (match.group(1), match.group(2) or "") if match else (transform, "")
    params = {}
    for part in filter(None, (p.strip() for p in args.split(","))):
        key, _, value = part.partition("=")
        try:
            params[key.strip()] = float(value)
        except ValueError:
            raise DataError(f"manifest: dense feature {name!r}: bad transform {transform!r}") from None
    if kind == "none":
        return lambda x: np.nan_to_num(x, nan=0.0).astype(np.float32)
    if kind == "log1p":  # as Criteo / synthetic prepare: missing and negative -> 0, then log(1 + x)
        return lambda x: np.log1p(np.maximum(np.nan_to_num(x, nan=0.0), 0.0)).astype(np.float32)
    if kind == "standardize" and {"mean", "std"} <= params.keys():
        mean, std = params["mean"], params["std"] or 1.0
        return lambda x: np.nan_to_num((x - mean) / std, nan=0.0).astype(np.float32)
    raise DataError(
        f"manifest: dense feature {name!r}: unknown transform {transform!r} "
        "(known: none, log1p, standardize(mean=.., std=..))"
    )


class RequestEncoder:
    """Encodes raw values with a dataset's manifest and vocabularies (loaded once, on first use)."""

    def __init__(self, manifest: Manifest, folder: str | Path):
        self.manifest = manifest
        self.folder = Path(folder)
        self._index: dict[str, pd.Index] = {}
        self._dense = {f.name: dense_transform(f.name, f.transform) for f in manifest.dense}

    def encode(
        self, df: pd.DataFrame, sparse_keys: list[str] | None = None, dense_names: list[str] | None = None
    ) -> tuple[torch.Tensor, KeyedJaggedTensor]:
        """Rows of raw values -> (dense float32 (n, len(dense_names)), KJT of ``sparse_keys``).

        Defaults: every dense feature in manifest order, every sparse one in ``manifest.sparse_keys``
        order. A column that is needed but absent raises :class:`DataError` naming it, but for the
        example age (days before the end of the training data), which is then now: the end of the
        data the model knows (``manifest.extra["example_age"]["now"]``).
        """
        sparse_keys = self.manifest.sparse_keys if sparse_keys is None else sparse_keys
        dense_names = [f.name for f in self.manifest.dense] if dense_names is None else dense_names
        age = self.manifest.roles.get("example_age")
        self._require(df, list(sparse_keys) + [d for d in dense_names if d != age])
        n = len(df)
        dense = np.zeros((n, len(dense_names)), np.float32)
        for j, name in enumerate(dense_names):
            if name not in self._dense:
                raise DataError(f"request: {name!r} is not a dense feature of the dataset")
            if name == age and name not in df.columns:  # a request asks about now: the end of the known data
                dense[:, j] = self.manifest.extra["example_age"]["now"]
                continue
            dense[:, j] = self._dense[name](pd.to_numeric(df[name], errors="coerce").to_numpy(np.float64))
        lengths, values = [], []
        for key in sparse_keys:
            feature = self.manifest.feature(key)
            if feature.multi_hot:
                sequence = key == self.manifest.roles.get("history")  # ordered, repeats kept, as in prepare
                lens, flat = _explode(_as_lists(df[key]), dedupe=feature.encoding == "vocab" and not sequence)
                lengths.append(lens)
                values.append(self.indices(key, flat))
            else:
                lengths.append(np.ones(n, np.int32))
                values.append(self.indices(key, df[key]))
        kjt = KeyedJaggedTensor(
            keys=list(sparse_keys),
            values=torch.from_numpy(np.concatenate(values) if values else np.zeros(0, np.int64)),
            lengths=torch.from_numpy(np.concatenate(lengths) if lengths else np.zeros(0, np.int32)),
            stride=n,
        )
        return torch.from_numpy(dense), kjt

    def indices(self, name: str, values: pd.Series | np.ndarray | list) -> np.ndarray:
        """Raw values of sparse feature ``name`` -> int64 indices (0 = OOV / missing)."""
        feature = self.manifest.feature(name)
        series = pd.Series(values, dtype=object if isinstance(values, list) else None).reset_index(drop=True)
        missing = series.isna().to_numpy()
        if feature.encoding == "vocab":
            out = self._vocab_indices(feature, series)
        elif feature.encoding == "hash":
            out = hash_encode(series, feature.cardinality)
        elif feature.encoding == "index":
            raw = pd.to_numeric(series, errors="coerce").to_numpy(np.float64)
            ok = (raw >= 0) & (raw < feature.cardinality) & (raw == np.floor(raw))
            out = np.where(ok, np.nan_to_num(raw), OOV_INDEX).astype(np.int64)
        else:
            raise DataError(f"manifest: sparse feature {name!r} has unknown encoding {feature.encoding!r}")
        out[missing] = OOV_INDEX
        return out

    def _vocab_indices(self, feature: SparseFeature, series: pd.Series) -> np.ndarray:
        index = self._index.get(feature.name)
        if index is None:
            name = feature.vocab or feature.name
            path = self.folder / "vocab" / f"{name}.parquet"
            if not path.is_file():
                raise DataError(f"{path}: missing vocabulary of sparse feature {feature.name!r}")
            index = self._index[feature.name] = pd.Index(Vocab.load(path.parent, name).values)
        codes = index.get_indexer(_like(series, index).to_numpy())
        return np.where(codes < 0, OOV_INDEX, codes + 1).astype(np.int64)

    def _require(self, df: pd.DataFrame, names: list[str]) -> None:
        missing = [n for n in names if n not in df.columns]
        if missing:
            raise DataError(
                f"request: no column {missing[0]!r} (the model needs {sorted(set(names))}; got {list(df.columns)})"
            )


def _as_lists(col: pd.Series) -> pd.Series:
    """Multi-hot cells: lists / arrays as they are, ``"a|b"`` text split, a lone value as a 1-list."""

    def cell(v: object) -> object:
        if isinstance(v, str):
            return v.split(LIST_SEP)
        if isinstance(v, (list, tuple, np.ndarray)):
            return list(v)
        return v if v is None or (isinstance(v, float) and np.isnan(v)) else [v]

    return pd.Series([cell(v) for v in col], dtype=object)


def _explode(col: pd.Series, dedupe: bool) -> tuple[np.ndarray, pd.Series]:
    """List cells -> (lengths int32 (n,), values in row order), missing and "" values dropped.

    Bags of vocabulary features are sets, as `prepare` made them from text; index-encoded bags (the
    synthetic source) keep their repeats, as generated.
    """
    if dedupe:
        return explode_lists(col)
    exploded = col.explode()
    keep = (exploded.notna() & (exploded.astype(str) != "")).to_numpy()
    lengths = np.bincount(exploded.index.to_numpy()[keep], minlength=len(col)).astype(np.int32)
    return lengths, exploded[keep].reset_index(drop=True)


def _like(series: pd.Series, index: pd.Index) -> pd.Series:
    """Raw values in the vocabulary's type: text "7" finds integer id 7, number 7 finds text "7"."""
    if index.dtype.kind in "iu" and series.dtype.kind not in "iuf":
        return pd.to_numeric(series, errors="coerce")
    if index.dtype.kind == "O" and series.dtype.kind in "iuf":
        numbers = series.dropna()
        if series.dtype.kind == "f" and (numbers == np.floor(numbers)).all():
            series = series.astype("Int64")  # 7.0 (ints with a gap become floats) -> "7"
        return series.astype(object).where(series.notna(), None).map(lambda v: v if v is None else str(v))
    return series


def explode_lists(col: pd.Series) -> tuple[np.ndarray, pd.Series]:
    """Cells holding lists (None/NaN = empty) -> (lengths int32 (n,), values of all rows in row order).

    Repeats inside one cell and empty strings are dropped: a multi-hot bag is a set.
    """
    s = pd.Series(col.to_numpy(dtype=object))
    exploded = s.explode()
    pos = exploded.index.to_numpy()
    vals = exploded.reset_index(drop=True)
    keep = vals.notna().to_numpy() & (vals.astype(str) != "").to_numpy()
    keep &= ~pd.DataFrame({"p": pos, "v": vals.astype(str)}).duplicated().to_numpy()
    lengths = np.bincount(pos[keep], minlength=len(s)).astype(np.int32)
    return lengths, vals[keep].reset_index(drop=True)
