"""One vector index for exact and approximate top-K search over items with raw ids.

    index = VectorIndex(kind="hnsw", dim=64, metric="cosine", m=32)
    index.add(item_ids, item_vectors)            # ids: int64 or str (n,), vectors: float32 (n, dim)
    scores, ids = index.search(user_vectors, k=100)  # float32 (Q, k), raw ids (Q, k)
    index.replace(changed_ids, new_vectors); index.delete(gone_ids)
    index.save("index/"); index = VectorIndex.load("index/")

Kinds (faiss, all inner product): ``exact`` = IndexFlatIP behind an IndexIDMap2, the oracle the
others are tested against; ``ivf`` = IndexIVFFlat (k-means lists, trained on the first ``add``);
``hnsw`` = IndexHNSWFlat (graph). ``metric`` must be the score the towers were trained with:
``dot`` searches raw vectors, ``cosine`` L2-normalises items and queries first.

Ids: faiss only knows int64 ids, so every item gets an internal id from a counter that is never
reused (a replaced item gets a new one) and the index keeps raw id <-> internal id. IVF stores
internal ids natively (IndexIDMap's ``remove_ids`` assumes the sub-index shifts its rows, which an
IVF index does not). HNSW cannot remove vectors: deleted and replaced items become tombstones,
left in the graph and kept out of results with an IDSelector. They cost memory and search time,
and recall once many sit near the queries: rebuild (``build_index``) when they pile up.

``search`` always returns ``k`` columns. A slot with no item (fewer than ``k`` live items, or an
approximate search that found fewer) has score ``-inf`` and id ``-1`` (int ids) or ``None`` (str
ids); test for it with ``np.isneginf(scores)``.

Threads: faiss shares torch's OpenMP runtime (``OMP_NUM_THREADS``, else every core) for batches
of queries; fewer than FEW_QUERIES queries (an online request) search on one thread, as waking
the pool costs more than the search. ``recfunnel serve`` runs everything on one thread.

External vector databases: the funnel only calls ``search(queries, k)`` and ``len()`` (the
:class:`VectorSearch` protocol), so an adapter over Databricks Vector Search, Qdrant, pgvector or
the like can stand in for the embedded index (see the README's "Vector index" section).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import faiss
import numpy as np

from recfunnel.errors import ConfigError, DataError
from recfunnel.files import atomic_output_dir

__all__ = ["VectorIndex", "VectorSearch", "KINDS", "METRICS", "as_ids", "check_vectors", "normalise"]

METRICS = ("dot", "cosine")
# kind -> its options and their defaults; None = chosen from the data (see _train_ivf)
KINDS: dict[str, dict[str, int | None]] = {
    "exact": {},
    "ivf": {"nlist": None, "nprobe": None},
    "hnsw": {"m": 32, "ef_construction": 40, "ef_search": 64},
}
SEARCH_OPTIONS = {"nprobe", "ef_search"}  # may change after the index is built
MIN_POINTS_PER_LIST = 39  # faiss k-means warns below this many training vectors per centroid
FORMAT = 1


def as_ids(ids: Any, name: str = "ids") -> np.ndarray:
    """Raw ids as int64 (n,) or object (n,) of str; anything else is a DataError."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise DataError(f"{name}: expected a 1-d array, got shape {arr.shape}")
    if arr.dtype.kind in "iu" or arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype.kind == "U":
        return arr.astype(object)
    if arr.dtype.kind == "O":
        for types in (str, (int, np.integer)):
            if all(isinstance(x, types) and not isinstance(x, bool) for x in arr):
                return arr if types is str else arr.astype(np.int64)
        row = next(i for i, x in enumerate(arr) if not isinstance(x, (str, int, np.integer)) or isinstance(x, bool))
        raise DataError(f"{name}: expected integers or strings, got {type(arr[row]).__name__} at row {row}")
    raise DataError(f"{name}: expected integers or strings, got {arr.dtype}")


def check_vectors(vectors: Any, dim: int | None, name: str, ids: np.ndarray | None = None) -> np.ndarray:
    """float32 C-contiguous (n, dim); the message names a wrong dim or the first row with NaN/inf."""
    arr = np.asarray(vectors)
    if arr.ndim != 2:
        raise DataError(f"{name}: expected a 2-d array (n, dim), got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise DataError(f"{name} have dim {arr.shape[1]}, the index has dim {dim}")
    if ids is not None and len(ids) != len(arr):
        raise DataError(f"{name}: {len(arr)} rows for {len(ids)} ids")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        row = int(np.argmax(bad))
        what = "NaN" if np.isnan(arr[row]).any() else "inf"
        where = f"row {row} (id {ids[row]!r})" if ids is not None else f"row {row}"
        raise DataError(f"{name}: {where} has {what}")
    return arr


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero, scoring 0 against everything)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, np.finfo(np.float32).tiny)).astype(np.float32)


@runtime_checkable
class VectorSearch(Protocol):
    """What the funnel needs of an index: top-``k`` (scores float32 (Q, k), raw ids (Q, k)) of
    float32 queries (Q, dim), best first, padded with -inf / -1; and how many items it holds."""

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def __len__(self) -> int: ...


class VectorIndex:
    """Top-K inner-product search over items with raw ids; add, replace, delete without a rebuild."""

    def __init__(self, *, dim: int, kind: str = "exact", metric: str = "dot", **params: int | None) -> None:
        if kind not in KINDS:
            raise ConfigError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
        if metric not in METRICS:
            raise ConfigError(f"metric: expected one of {', '.join(METRICS)}, got {metric!r}")
        if not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ConfigError(f"dim: expected an integer >= 1, got {dim!r}")
        self.kind, self.metric, self.dim = kind, metric, int(dim)
        self.params: dict[str, int | None] = dict(KINDS[kind])
        self._set_params(params, allowed=set(KINDS[kind]))
        self._raw = np.zeros(0, np.int64)  # internal id -> raw id (stale rows for deleted items)
        self._internal: dict[Any, int] = {}  # raw id -> internal id of live items
        self._tombstones: set[int] = set()  # hnsw only: internal ids deleted or replaced
        self._selector: tuple[Any, Any] | None = None  # hnsw: (IDSelectorNot, its IDSelectorBatch)
        self._index = self._new_faiss_index()

    # ---- updates -------------------------------------------------------------------------
    def add(self, ids: Any, vectors: Any) -> None:
        """Add new items; an id already in the index (or twice in ``ids``) is an error."""
        ids = self._check_id_type(as_ids(ids))
        vectors = self._prepare(check_vectors(vectors, self.dim, "vectors", ids))
        raws = ids.tolist()
        known = next((raw for raw in raws if raw in self._internal), None)
        if known is not None:
            raise DataError(f"ids: {known!r} is already in the index")
        if (twice := _first_duplicate(raws)) is not None:
            raise DataError(f"ids: {twice!r} appears twice")
        self._append(ids, vectors)

    def replace(self, ids: Any, vectors: Any) -> None:
        """Give existing items new vectors (e.g. after retraining the item tower)."""
        ids = as_ids(ids)
        vectors = self._prepare(check_vectors(vectors, self.dim, "vectors", ids))
        old = self._lookup(ids, missing_ok=False)
        if (twice := _first_duplicate(ids.tolist())) is not None:
            raise DataError(f"ids: {twice!r} appears twice")
        self._remove(np.asarray(old, np.int64))
        for raw in ids.tolist():
            del self._internal[raw]
        self._append(ids, vectors)

    def delete(self, ids: Any, missing_ok: bool = False) -> int:
        """Delete items; an unknown id is an error unless ``missing_ok``. Returns how many went."""
        ids = as_ids(ids)
        internal = sorted(set(self._lookup(ids, missing_ok)))
        self._remove(np.asarray(internal, np.int64))
        for raw in ids.tolist():
            self._internal.pop(raw, None)
        return len(internal)

    def __len__(self) -> int:
        return len(self._internal)

    def __contains__(self, raw_id: Any) -> bool:
        return (raw_id.item() if isinstance(raw_id, np.generic) else raw_id) in self._internal

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"VectorIndex(kind={self.kind!r}, metric={self.metric!r}, dim={self.dim}, items={len(self)}" + (
            f", {params})" if params else ")"
        )

    # ---- search --------------------------------------------------------------------------
    def set_search_params(self, **params: int) -> None:
        """Trade speed for recall on a built index: ``nprobe`` (ivf), ``ef_search`` (hnsw)."""
        self._set_params(params, allowed=SEARCH_OPTIONS & set(KINDS[self.kind]))
        self._apply_search_params()

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items of each query: scores float32 (Q, k) best first, raw ids (Q, k).

        Empty slots have score -inf and id -1 (int ids) or None (str ids).
        """
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise DataError(f"k: expected an integer >= 1, got {k!r}")
        queries = self._prepare(check_vectors(queries, self.dim, "queries"))
        scores = np.full((len(queries), k), -np.inf, np.float32)
        internal = np.full((len(queries), k), -1, np.int64)
        if len(self) and len(queries):
            fetch = min(k, len(self))  # faiss would allocate and scan for all k slots
            params = None
            if self.kind == "hnsw":
                # Tombstones are still walked and take places in the candidate list: give them up to
                # ef_search more, so a few deletions cost no recall (many do: rebuild then).
                ef = max(self.params["ef_search"], fetch) + min(len(self._tombstones), self.params["ef_search"])
                params = faiss.SearchParametersHNSW(efSearch=ef)
                if self._tombstones:
                    params.sel = self._tombstone_selector()
            with _omp_threads(1 if len(queries) < FEW_QUERIES else None):
                scores[:, :fetch], internal[:, :fetch] = self._index.search(queries, fetch, params=params)
        empty = internal < 0
        scores[empty] = -np.inf
        ids = self._raw[np.where(empty, 0, internal)] if len(self._raw) else internal.astype(self._raw.dtype)
        ids[empty] = -1 if ids.dtype == np.int64 else None
        return scores, ids

    # ---- persistence ---------------------------------------------------------------------
    def save(self, folder: str | Path, overwrite: bool = False) -> None:
        """Write ``index.faiss``, ``ids.npy`` / ``internal_ids.npy`` (live items), ``tombstones.npy``
        and ``index.json`` into ``folder``, atomically (a failed save leaves no folder behind)."""
        raw = np.array(list(self._internal), dtype=self._raw.dtype) if len(self) else self._raw[:0]
        meta = {
            "format": FORMAT,
            "kind": self.kind,
            "metric": self.metric,
            "dim": self.dim,
            "params": self.params,
            "count": len(self),
            "tombstones": len(self._tombstones),
            "next_internal_id": len(self._raw),
            "id_type": "str" if self._raw.dtype == object else "int",
        }
        with atomic_output_dir(folder, overwrite=overwrite) as tmp:
            faiss.write_index(self._index, str(tmp / "index.faiss"))
            # str ids are saved as fixed-width unicode, so loading needs no pickle
            np.save(tmp / "ids.npy", raw.astype(str) if meta["id_type"] == "str" else raw, allow_pickle=False)
            np.save(tmp / "internal_ids.npy", np.fromiter(self._internal.values(), np.int64, len(self)))
            np.save(tmp / "tombstones.npy", np.array(sorted(self._tombstones), np.int64))
            (tmp / "index.json").write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> VectorIndex:
        """The index ``save`` wrote; a missing file or disagreeing counts is a DataError."""
        folder = Path(folder)
        for name in ("index.json", "index.faiss", "ids.npy", "internal_ids.npy", "tombstones.npy"):
            if not (folder / name).is_file():
                raise DataError(f"{folder / name}: missing; not a folder written by VectorIndex.save")
        meta = json.loads((folder / "index.json").read_text())
        if meta.get("format") != FORMAT:
            raise DataError(f"{folder / 'index.json'}: format {meta.get('format')!r}, expected {FORMAT}")
        self = cls(dim=meta["dim"], kind=meta["kind"], metric=meta["metric"], **meta["params"])
        self._index = faiss.read_index(str(folder / "index.faiss"))
        raw = np.load(folder / "ids.npy", allow_pickle=False)
        internal = np.load(folder / "internal_ids.npy", allow_pickle=False)
        self._tombstones = set(np.load(folder / "tombstones.npy", allow_pickle=False).tolist())
        raw = raw.astype(object) if meta["id_type"] == "str" else raw.astype(np.int64)
        if not len(raw) == len(internal) == meta["count"] == self._index.ntotal - len(self._tombstones):
            raise DataError(
                f"{folder}: {len(raw)} ids, {len(internal)} internal ids, count {meta['count']} "
                f"and {self._index.ntotal} vectors - {len(self._tombstones)} tombstones disagree"
            )
        self._raw = np.zeros(meta["next_internal_id"], raw.dtype)
        self._raw[internal] = raw
        self._internal = dict(zip(raw.tolist(), internal.tolist()))
        self._apply_search_params()
        return self

    # ---- internals -----------------------------------------------------------------------
    def _set_params(self, params: dict[str, Any], allowed: set[str]) -> None:
        for name, value in params.items():
            if name not in allowed:
                valid = ", ".join(sorted(allowed)) or "none"
                raise ConfigError(f"{self.kind} index: unknown option {name!r}; valid: {valid}")
            if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
                raise ConfigError(f"{name}: expected an integer >= 1, got {value!r}")
            self.params[name] = None if value is None else int(value)

    def _new_faiss_index(self) -> faiss.Index:
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, self.params["m"], faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self.params["ef_construction"]
            return index
        if self.kind == "exact":
            return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        return faiss.IndexFlatIP(self.dim)  # ivf: a placeholder until the first add trains the lists

    def _train_ivf(self, vectors: np.ndarray) -> None:
        """nlist ~ 4 sqrt(n), at most n / 39 so k-means has enough vectors per list; nprobe ~ nlist / 32."""
        n = len(vectors)
        nlist = self.params["nlist"] or max(1, min(round(4 * math.sqrt(n)), n // MIN_POINTS_PER_LIST))
        if nlist > n:
            raise DataError(f"nlist: {nlist} lists need at least {nlist} vectors in the first add, got {n}")
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        self._quantizer = quantizer  # the IVF index points at it; keep it alive with the index
        self._index = index
        self.params["nlist"] = nlist
        self.params["nprobe"] = self.params["nprobe"] or min(nlist, max(16, nlist // 32))
        self._apply_search_params()

    def _apply_search_params(self) -> None:
        if self.kind == "ivf" and isinstance(self._index, faiss.IndexIVF) and self.params["nprobe"]:
            self._index.nprobe = min(self.params["nprobe"], self._index.nlist)

    def _prepare(self, vectors: np.ndarray) -> np.ndarray:
        return normalise(vectors) if self.metric == "cosine" else vectors

    def _check_id_type(self, ids: np.ndarray) -> np.ndarray:
        if len(self._raw) and len(ids) and ids.dtype != self._raw.dtype:
            held, given = ("str" if d.kind == "O" else "int" for d in (self._raw.dtype, ids.dtype))
            raise DataError(f"ids: got {given} ids, the index holds {held} ids")
        return ids

    def _lookup(self, ids: np.ndarray, missing_ok: bool) -> list[int]:
        found = []
        for raw in ids.tolist():
            if raw in self._internal:
                found.append(self._internal[raw])
            elif not missing_ok:
                raise DataError(f"ids: {raw!r} is not in the index")
        return found

    def _append(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if not len(ids):
            return
        if self.kind == "ivf" and not isinstance(self._index, faiss.IndexIVF):
            self._train_ivf(vectors)
        start = len(self._raw)
        internal = np.arange(start, start + len(ids), dtype=np.int64)
        if self.kind == "hnsw":
            assert self._index.ntotal == start, "hnsw internal ids are its row numbers"
            self._index.add(vectors)
        else:
            self._index.add_with_ids(vectors, internal)
        self._raw = np.concatenate([self._raw.astype(ids.dtype) if not start else self._raw, ids])
        self._internal.update(zip(ids.tolist(), internal.tolist()))

    def _remove(self, internal: np.ndarray) -> None:
        if not len(internal):
            return
        if self.kind == "hnsw":
            self._tombstones.update(internal.tolist())
            self._selector = None
        else:
            self._index.remove_ids(internal)

    def _tombstone_selector(self) -> Any:
        if self._selector is None:
            batch = faiss.IDSelectorBatch(np.fromiter(self._tombstones, np.int64, len(self._tombstones)))
            self._selector = (faiss.IDSelectorNot(batch), batch)  # Not holds a raw pointer to batch
        return self._selector[0]


FEW_QUERIES = 16


@contextmanager
def _omp_threads(n: int | None) -> Iterator[None]:
    """A few queries search on one OpenMP thread: waking the pool costs more than it saves
    (measured: 0.07 ms vs 5.8 ms for one query over 1,682 items on a busy 2-core machine).
    Restores the caller's setting, not the machine's: torch shares the OpenMP runtime, and a server
    that asked for one thread had its next torch call spin a second one (~0.9 core at 600 req/s)."""
    if n is None:
        yield
        return
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def _first_duplicate(values: list[Any]) -> Any | None:
    seen: set[Any] = set()
    for value in values:
        if value in seen:
            return value
        seen.add(value)
    return None
