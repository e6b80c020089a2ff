"""Every user or every item of an interactions dataset, as tower inputs.

    items = Catalog.load("data/ml-100k", manifest, "item")
    dense, kjt = items.inputs(items.positions_of(np.array([5, 9])), ["item_id", "genres"], ["year"])

Rows come from ``items.parquet`` / ``users.parquet``, whose sparse columns are already encoded
indices (multi-hot ones as lists) and dense columns already transformed, as in the shards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recfunnel.data.format.manifest import Manifest
from recfunnel.data.format.rows import jagged_take
from recfunnel.errors import DataError

__all__ = ["Catalog", "before_val_column"]


def before_val_column(name: str) -> str:
    """The users table's column of feature ``name`` as of the validation split (the history)."""
    return f"{name}_before_val"


@dataclass
class Catalog:
    role: str  # "user" | "item"
    index: np.ndarray  # int64 (n,): the id feature's index of each row (>= 1)
    raw_ids: np.ndarray  # (n,): the ids as in the input files
    single: dict[str, np.ndarray]  # single-hot feature -> int64 (n,)
    multi: dict[str, tuple[np.ndarray, np.ndarray]]  # multi-hot feature -> (lengths int32 (n,), values int64)
    dense: dict[str, np.ndarray]  # dense feature -> float32 (n,)
    frame: pd.DataFrame  # the file as read (titles and such, for people)
    cardinality: int  # of the id feature: indices are < cardinality
    _lookup: np.ndarray | None = field(default=None, repr=False)  # index -> row position

    @classmethod
    def load(cls, folder: str | Path, manifest: Manifest, role: str, as_of: str = "test") -> Catalog:
        """``as_of``: the split whose moment the features describe. A user's history at "val" is
        their training rows only (the ``history_before_val`` column, where the table has it); at
        "test" (and serving) it holds their validation rows too. So for the example age: the end of
        the training data at "val", of the validation data at "test"."""
        path = Path(folder) / f"{role}s.parquet"
        if not path.is_file():
            raise DataError(f"{path}: missing; a two-tower model needs the {role} table of `recfunnel prepare`")
        frame = pd.read_parquet(path)
        id_name = manifest.roles[role]
        index_col, id_col = f"{role}_index", f"{role}_id"
        for col in (index_col, id_col):
            if col not in frame.columns:
                raise DataError(f"{path}: no column {col!r}")
        single, multi, dense = {}, {}, {}
        single[id_name] = frame[index_col].to_numpy(np.int64)
        dense_names = {f.name for f in manifest.dense}
        for name in manifest.roles.get(f"{role}_features", []):
            if name not in frame.columns:
                raise DataError(f"{path}: no column {name!r} for {role} feature {name!r}")
            col = frame[name]
            if as_of != "test" and before_val_column(name) in frame.columns:  # the history, the example age
                col = frame[before_val_column(name)]
            if name in dense_names:
                dense[name] = col.to_numpy(np.float32)
            elif manifest.feature(name).multi_hot:
                lists = [np.asarray(v, np.int64) for v in col]
                multi[name] = (
                    np.array([len(v) for v in lists], np.int32),
                    np.concatenate(lists) if lists else np.zeros(0, np.int64),
                )
            else:
                single[name] = col.to_numpy(np.int64)
        return cls(
            role,
            single[id_name],
            frame[id_col].to_numpy(),
            single,
            multi,
            dense,
            frame,
            manifest.feature(id_name).cardinality,
        )

    def __len__(self) -> int:
        return len(self.index)

    def positions_of(self, index: np.ndarray) -> np.ndarray:
        """Row positions of id-feature indices (-1 where unknown)."""
        if self._lookup is None:  # built once: training asks for every batch of sampled negatives
            self._lookup = np.full(self.cardinality, -1, np.int64)
            self._lookup[self.index] = np.arange(len(self.index))
        return self._lookup[np.asarray(index, np.int64)]

    def inputs(
        self, rows: np.ndarray, sparse_keys: list[str], dense_names: list[str]
    ) -> tuple[torch.Tensor, KeyedJaggedTensor]:
        """Tower inputs of catalogue rows ``rows``: dense float (n, len(dense_names)), KJT of ``sparse_keys``."""
        n = len(rows)
        lengths, values = [], []
        for key in sparse_keys:
            if key in self.single:
                lengths.append(np.ones(n, np.int32))
                values.append(self.single[key][rows])
            else:
                new_lengths, new_values = jagged_take(*self.multi[key], rows)
                lengths.append(new_lengths.astype(np.int32))
                values.append(new_values)
        dense = np.stack([self.dense[d][rows] for d in dense_names], axis=1) if dense_names else np.zeros((n, 0))
        kjt = KeyedJaggedTensor(
            keys=sparse_keys,
            values=torch.from_numpy(np.concatenate(values)),
            lengths=torch.from_numpy(np.concatenate(lengths)),
            stride=n,
        )
        return torch.from_numpy(dense.astype(np.float32)), kjt
