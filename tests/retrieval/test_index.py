"""VectorIndex against a numpy brute-force top-k: exact kind equal, approximate kinds by recall,
updates without rebuild, save/load, errors. Tiny data: 2000 x 16 clustered vectors."""

import numpy as np
import pytest

from recfunnel.errors import ConfigError, DataError
from recfunnel.retrieval.index import KINDS, VectorIndex
from recfunnel.retrieval.index_build import build_index, exact_search, recall, recall_against_exact

N, DIM, K = 2000, 16, 10
# Half the ivf lists are probed. HNSW needs m 32 for recall >= 0.9 on inner product (not cosine)
# over vectors of unequal norms (m 8: 0.82, m 16: 0.87); at 2000 items it still builds in ~50 ms.
PARAMS = {"exact": {}, "ivf": {"nlist": 32, "nprobe": 16}, "hnsw": {"m": 32, "ef_construction": 40, "ef_search": 64}}


def clustered(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    """A mixture of 20 Gaussians with unequal norms, like item embeddings (not uniform noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, dim)) * 2
    x = centres[rng.integers(0, 20, n)] + rng.standard_normal((n, dim))
    return x.astype(np.float32)


ITEMS = clustered(N)
QUERIES = clustered(100, seed=1)
IDS = np.arange(N, dtype=np.int64) * 10 + 3  # raw ids unlike row numbers


def brute_force(ids, vectors, queries, k, cosine=False):
    """(scores, ids) of the numpy top-k."""
    if cosine:
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = queries @ vectors.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, top, 1), np.asarray(ids)[top]


def make(kind, ids=IDS, vectors=ITEMS, metric="dot"):
    index = VectorIndex(dim=DIM, kind=kind, metric=metric, **PARAMS[kind])
    index.add(ids, vectors)
    return index


@pytest.mark.parametrize("metric", ["dot", "cosine"])
def test_exact_equals_numpy_brute_force(metric):
    scores, ids = make("exact", metric=metric).search(QUERIES, K)
    want_scores, want_ids = brute_force(IDS, ITEMS, QUERIES, K, cosine=metric == "cosine")
    assert scores.dtype == np.float32 and scores.shape == ids.shape == (len(QUERIES), K)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-4)


def test_cosine_differs_from_dot_on_unnormalised_vectors():
    scaled = ITEMS * np.random.default_rng(2).uniform(0.1, 10, (N, 1)).astype(np.float32)
    _, dot = make("exact", vectors=scaled).search(QUERIES, K)
    scores, cosine = make("exact", vectors=scaled, metric="cosine").search(QUERIES, K)
    assert (dot != cosine).any()
    assert scores.max() <= 1 + 1e-5
    # the cosine index's answer does not depend on the items' norms
    np.testing.assert_array_equal(cosine, make("exact", metric="cosine").search(QUERIES, K)[1])


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
@pytest.mark.parametrize("metric", ["dot", "cosine"])
def test_approximate_recall_at_10(kind, metric):
    index = make(kind, metric=metric)
    assert recall_against_exact(index, (IDS, ITEMS), QUERIES, K) >= 0.9
    assert recall_against_exact(index, make("exact", metric=metric), QUERIES, K) >= 0.9


def test_ivf_probing_every_list_is_exact():
    index = make("ivf")
    index.set_search_params(nprobe=PARAMS["ivf"]["nlist"])
    assert recall_against_exact(index, (IDS, ITEMS), QUERIES, K) == 1.0
    with pytest.raises(ConfigError, match="unknown option 'nlist'"):
        index.set_search_params(nlist=8)


def test_ivf_chooses_nlist_from_the_data():
    index = VectorIndex(dim=DIM, kind="ivf")
    index.add(IDS, ITEMS)
    assert index.params["nlist"] == N // 39 and index.params["nprobe"] == 16


@pytest.mark.parametrize("kind", list(KINDS))
def test_add_replace_delete_change_results(kind):
    index = make(kind)
    q = QUERIES[:3]
    # add: a vector along query 0, far longer than any item, is its top hit with score q.v
    index.add([-5], 50 * q[:1])
    scores, ids = index.search(q[:1], K)
    assert ids[0, 0] == -5 and scores[0, 0] == pytest.approx(50 * q[0] @ q[0], rel=1e-4)
    # replace: item IDS[0] moves along query 1
    index.replace([IDS[0]], 50 * q[1:2])
    scores, ids = index.search(q[1:2], K)
    assert ids[0, 0] == IDS[0] and scores[0, 0] == pytest.approx(50 * q[1] @ q[1], rel=1e-4)
    assert len(index) == N + 1 and IDS[0] in index and -5 in index
    # delete: the current top-10 of every query, and the added item, never come back
    gone = set(index.search(QUERIES, K)[1].ravel().tolist()) | {-5}
    assert index.delete(sorted(gone)) == len(gone)
    assert len(index) == N + 1 - len(gone) and -5 not in index
    _, ids = index.search(QUERIES, 50)
    assert not gone & set(ids.ravel().tolist())
    # what is left is searched as a brute force over the live items would
    live = np.isin(IDS, sorted(gone), invert=True)
    truth = brute_force(IDS[live], ITEMS[live], QUERIES, K)
    assert recall(index.search(QUERIES, K), truth) >= (1.0 if kind == "exact" else 0.9)


@pytest.mark.parametrize("kind", list(KINDS))
def test_save_load_round_trip(kind, tmp_path):
    index = make(kind)
    index.delete(IDS[:100])
    index.replace(IDS[100:110], ITEMS[:10])
    index.save(tmp_path / "index")
    loaded = VectorIndex.load(tmp_path / "index")
    assert (loaded.kind, loaded.metric, loaded.dim, loaded.params, len(loaded)) == (
        index.kind,
        index.metric,
        index.dim,
        index.params,
        len(index),
    )
    for got, want in zip(loaded.search(QUERIES, K), index.search(QUERIES, K)):
        np.testing.assert_array_equal(got, want)
    # the loaded index keeps taking updates
    loaded.add([-1], 50 * QUERIES[:1])
    loaded.delete(IDS[110:120])
    assert loaded.search(QUERIES[:1], 1)[1][0, 0] == -1 and IDS[110] not in loaded
    with pytest.raises(DataError, match="already exists"):
        index.save(tmp_path / "index")


def test_load_names_a_missing_file(tmp_path):
    make("exact").save(tmp_path / "index")
    (tmp_path / "index" / "ids.npy").unlink()
    with pytest.raises(DataError, match="ids.npy: missing"):
        VectorIndex.load(tmp_path / "index")


@pytest.mark.parametrize("kind", list(KINDS))
def test_string_ids(kind, tmp_path):
    names = np.array([f"item-{i}" for i in range(N)])
    index = make(kind, ids=names)
    _, ids = index.search(QUERIES, K)
    _, want = brute_force(names, ITEMS, QUERIES, K)
    assert ids.dtype == object and isinstance(ids[0, 0], str)
    assert recall((np.zeros(ids.shape), ids), (np.zeros(want.shape), want)) >= (1.0 if kind == "exact" else 0.9)
    index.delete(["item-0"])
    index.replace(["item-1"], ITEMS[:1])
    index.save(tmp_path / "index")
    loaded = VectorIndex.load(tmp_path / "index")
    np.testing.assert_array_equal(loaded.search(QUERIES, K)[1], index.search(QUERIES, K)[1])
    assert "item-1" in loaded and "item-0" not in loaded
    with pytest.raises(DataError, match="got int ids, the index holds str ids"):
        loaded.add([7], ITEMS[:1])


@pytest.mark.parametrize("kind", list(KINDS))
def test_fewer_items_than_k_pad_with_minus_inf(kind):
    index = VectorIndex(dim=DIM, kind=kind, **({"nlist": 1} if kind == "ivf" else {}))
    scores, ids = index.search(QUERIES[:2], 3)  # empty (ivf: not even trained)
    assert np.isneginf(scores).all() and (ids == -1).all()
    index.add([4, 5], ITEMS[:2])
    scores, ids = index.search(QUERIES[:2], 4)
    assert scores.shape == ids.shape == (2, 4)
    assert np.isfinite(scores[:, :2]).all() and np.isneginf(scores[:, 2:]).all()
    assert sorted(ids[0, :2]) == [4, 5] and (ids[:, 2:] == -1).all()
    index.delete([4])
    scores, ids = index.search(QUERIES[:1], 2)
    assert ids.tolist() == [[5, -1]] and np.isneginf(scores[0, 1])


def test_string_ids_pad_with_none():
    index = VectorIndex(dim=DIM)
    index.add(["a"], ITEMS[:1])
    assert index.search(QUERIES[:1], 2)[1].tolist() == [["a", None]]


@pytest.mark.parametrize("kind", list(KINDS))
def test_update_errors_name_the_id(kind):
    index = make(kind)
    with pytest.raises(DataError, match="ids: 3 is already in the index"):
        index.add([-7, 3], ITEMS[:2])
    with pytest.raises(DataError, match="ids: -7 appears twice"):
        index.add([-7, -7], ITEMS[:2])
    with pytest.raises(DataError, match="ids: 4 is not in the index"):
        index.replace([3, 4], ITEMS[:2])
    with pytest.raises(DataError, match="ids: 4 is not in the index"):
        index.delete([3, 4])
    assert len(index) == N and 3 in index  # nothing changed by the failed calls
    assert index.delete([3, 4], missing_ok=True) == 1 and 3 not in index


def test_vector_errors_name_the_field():
    index = make("exact")
    with pytest.raises(DataError, match="^queries have dim 32, the index has dim 16$"):
        index.search(np.zeros((2, 32), np.float32), K)
    with pytest.raises(DataError, match="^vectors have dim 8, the index has dim 16$"):
        index.add([1], np.zeros((1, 8)))
    bad = ITEMS[:3].copy()
    bad[1, 5] = np.nan
    with pytest.raises(DataError, match="vectors: row 1 \\(id 'b'\\) has NaN"):
        VectorIndex(dim=DIM).add(["a", "b", "c"], bad)
    with pytest.raises(DataError, match="queries: row 1 has NaN"):
        index.search(bad, K)
    with pytest.raises(DataError, match="vectors: 3 rows for 2 ids"):
        VectorIndex(dim=DIM).add([1, 2], ITEMS[:3])
    with pytest.raises(DataError, match="ids: expected integers or strings, got float64"):
        VectorIndex(dim=DIM).add([1.5], ITEMS[:1])


def test_config_errors_list_what_is_valid():
    with pytest.raises(ConfigError, match="kind: expected one of exact, ivf, hnsw, got 'annoy'"):
        VectorIndex(dim=DIM, kind="annoy")
    with pytest.raises(ConfigError, match="metric: expected one of dot, cosine, got 'l2'"):
        VectorIndex(dim=DIM, metric="l2")
    with pytest.raises(ConfigError, match="hnsw index: unknown option 'M'; valid: ef_construction, ef_search, m"):
        VectorIndex(dim=DIM, kind="hnsw", M=16)
    with pytest.raises(ConfigError, match="nprobe: expected an integer >= 1, got 0"):
        VectorIndex(dim=DIM, kind="ivf", nprobe=0)
    with pytest.raises(DataError, match="nlist: 64 lists need at least 64 vectors in the first add, got 10"):
        VectorIndex(dim=DIM, kind="ivf", nlist=64).add(IDS[:10], ITEMS[:10])


def test_build_index_reports_recall():
    index, report = build_index(IDS, ITEMS, "hnsw", "cosine", recall_k=K, recall_sample=200, **PARAMS["hnsw"])
    assert (report.kind, report.metric, report.count, report.dim) == ("hnsw", "cosine", N, DIM)
    assert report.recall_queries == 200
    assert report.recall >= 0.9 and report.build_seconds >= 0 and report.params["m"] == 32
    assert len(index) == N
    _, exact = build_index(IDS, ITEMS)
    assert exact.recall is None and exact.recall_queries == 0


def test_exact_search_pads_like_the_index():
    scores, ids = exact_search(IDS[:2], ITEMS[:2], QUERIES[:1], 3)
    np.testing.assert_array_equal(ids, make("exact", IDS[:2], ITEMS[:2]).search(QUERIES[:1], 3)[1])
    assert ids[0, 2] == -1 and np.isneginf(scores[0, 2])


def test_bench_index_rows():
    from recfunnel.bench.index import bench_index

    rows = bench_index(
        n=3000,
        dim=8,
        queries=20,
        k=10,
        repeats=1,
        params={"hnsw": {"m": 8}},
        sweep={"ivf": {"nprobe": (4,)}, "hnsw": {}},
    )
    assert [row["kind"] for row in rows] == ["exact", "ivf", "hnsw"]
    assert rows[0]["recall_at_k"] == 1.0 and rows[1]["params"]["nprobe"] == 4
    assert all(row["queries_per_s"] > 0 and 0 < row["recall_at_k"] <= 1 for row in rows)
