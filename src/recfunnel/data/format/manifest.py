"""The dataset manifest: what a prepared dataset holds, written beside its shards.

A prepared dataset is a folder::

    manifest.json           this schema: features, labels, split, row counts, sources, seed
    vocab/<feature>.parquet raw value -> index, one file per vocabulary-encoded feature
    items.parquet           (interactions) every item: index, raw id, item features
    users.parquet           (interactions) every user: index, raw id, user features
    train/ val/ test/       MDS shards; each MDS sample is a *block* of rows (see shards.py)

Index 0 of every sparse feature is the out-of-vocabulary / missing bucket, so a raw id 0 is a
normal id (it gets its own index >= 1) and unseen ids at inference land in bucket 0.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recfunnel.errors import DataError

__all__ = [
    "FORMAT_VERSION",
    "OOV_INDEX",
    "DenseFeature",
    "SparseFeature",
    "Label",
    "SplitInfo",
    "Manifest",
    "load_manifest",
]

FORMAT_VERSION = 1
OOV_INDEX = 0
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class DenseFeature:
    name: str
    transform: str = "none"  # how raw values became floats: none | log1p | standardize | ...


@dataclass(frozen=True)
class SparseFeature:
    """A categorical feature. Indices are in ``[0, cardinality)``; 0 is the OOV bucket."""

    name: str
    cardinality: int
    multi_hot: bool = False
    encoding: str = "vocab"  # vocab (file in vocab/) | hash (index = 1 + hash % (cardinality-1)) | index
    max_len: int = 1  # longest list seen (multi-hot)
    vocab: str = ""  # the feature whose vocabulary it uses ("": its own), e.g. item_id for history


@dataclass(frozen=True)
class Label:
    name: str
    kind: str = "binary"  # binary | regression | multiclass
    rule: str = ""  # how it was derived, e.g. "rating >= 4"


@dataclass(frozen=True)
class SplitInfo:
    """Rows of one split and how they are cut into blocks.

    ``blocks`` is run-length encoded: ``[[count, rows_per_block], ...]`` in MDS sample order, so
    the loader knows every block's size without reading it.
    """

    rows: int
    blocks: list[list[int]]
    positives: float | None = None  # share of rows whose first label is > 0

    def block_rows(self) -> list[int]:
        out: list[int] = []
        for count, rows in self.blocks:
            out.extend([rows] * count)
        return out


@dataclass
class Manifest:
    kind: str  # "interactions" (user-item) | "ctr" (Criteo-shaped)
    dense: list[DenseFeature]
    sparse: list[SparseFeature]
    labels: list[Label]
    splits: dict[str, SplitInfo]
    split: dict[str, Any]  # how rows were split: kind, seed, fractions / leave_last / cut
    block_rows: int
    source: dict[str, Any] = field(default_factory=dict)  # kind, variant, files with sha256
    roles: dict[str, Any] = field(default_factory=dict)  # user / item id features, feature owners
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. bayes_auc for synthetic data
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        names = [f.name for f in self.dense] + [f.name for f in self.sparse]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise DataError(f"manifest: feature names must be unique, repeated: {sorted(dup)}")
        if not self.labels:
            raise DataError("manifest: at least one label is required")
        for f in self.sparse:
            if f.cardinality < 1:
                raise DataError(f"manifest: sparse feature {f.name!r} has cardinality {f.cardinality}, expected >= 1")

    @property
    def single_hot(self) -> list[SparseFeature]:
        return [f for f in self.sparse if not f.multi_hot]

    @property
    def multi_hot(self) -> list[SparseFeature]:
        return [f for f in self.sparse if f.multi_hot]

    @property
    def sparse_keys(self) -> list[str]:
        """KeyedJaggedTensor key order: single-hot features, then multi-hot ones."""
        return [f.name for f in self.single_hot] + [f.name for f in self.multi_hot]

    def feature(self, name: str) -> SparseFeature:
        for f in self.sparse:
            if f.name == name:
                return f
        raise DataError(f"manifest: no sparse feature {name!r}; have {[f.name for f in self.sparse]}")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for feature in out["sparse"]:  # absent when unused: older readers still read the manifest
            if not feature["vocab"]:
                del feature["vocab"]
        return out

    @classmethod
    def from_dict(cls, obj: dict[str, Any], where: str = MANIFEST) -> Manifest:
        try:
            version = obj.get("format_version")
            if version != FORMAT_VERSION:
                raise DataError(f"{where}: format_version {version!r}, expected {FORMAT_VERSION}")
            return cls(
                kind=obj["kind"],
                dense=[DenseFeature(**f) for f in obj["dense"]],
                sparse=[SparseFeature(**f) for f in obj["sparse"]],
                labels=[Label(**f) for f in obj["labels"]],
                splits={k: SplitInfo(**v) for k, v in obj["splits"].items()},
                split=obj["split"],
                block_rows=int(obj["block_rows"]),
                source=obj.get("source", {}),
                roles=obj.get("roles", {}),
                extra=obj.get("extra", {}),
                format_version=version,
            )
        except KeyError as e:
            raise DataError(f"{where}: missing field {e.args[0]!r}") from None
        except TypeError as e:
            raise DataError(f"{where}: malformed manifest ({e})") from None

    def save(self, folder: str | Path) -> None:
        path = Path(folder) / MANIFEST
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")
        tmp.replace(path)


def load_manifest(folder: str | Path) -> Manifest:
    """Read ``folder/manifest.json``; a missing or malformed file raises :class:`DataError`."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: no manifest; is {folder} a dataset written by `recfunnel prepare`?")
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    return Manifest.from_dict(obj, where=str(path))
