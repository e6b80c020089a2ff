"""The funnel end to end on tiny generated data: `recfunnel index`, every stage, cold start, batch
`recommend` and `evaluate` of the funnel. (HTTP serving: tests/serve.)"""

import json
import os

import numpy as np
import pandas as pd
import pytest

from recfunnel.funnel.pipeline import Funnel, funnel_config
from recfunnel.funnel.rerank import jaccard, jaccard_of_members, mmr, mmr_many
from recfunnel.retrieval.item_index import ItemIndex

QUICK = ["--quiet", "--set", "train.epochs=2", "--set", "train.batch_size=256", "--set", "eval.baselines=false"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from recfunnel.cli import main

    root = tmp_path_factory.mktemp("funnel")
    data = root / "data"
    assert (
        main(["prepare", "synthetic", "--kind", "interactions", "--rows", "6000", "--out", str(data), "--quiet"]) == 0
    )
    assert main(["train", "--model", "two-tower", "--data", str(data), "--out", str(root / "tt"), *QUICK]) == 0
    assert main(["train", "--model", "dlrm", "--data", str(data), "--out", str(root / "dlrm"), *QUICK]) == 0
    assert main(["index", "--run", str(root / "tt"), "--out", str(root / "index"), "--quiet"]) == 0
    return root


@pytest.fixture(scope="module")
def funnel(runs):
    return Funnel.load(runs / "tt", index=runs / "index", ranker=runs / "dlrm")


def known_user(funnel, n=0):
    """The raw id of the user with the n-th fewest training items (60 items in all: most users
    have seen a good share of them)."""
    seen = [len(funnel.interactions.seen(int(u))) for u in funnel.users.index]
    return funnel.users.raw_ids[np.argsort(seen, kind="stable")[n]].item()


def test_index_command_reports_recall_of_approximate_kinds(cli, runs):
    code, out, _ = cli("index", "--run", runs / "tt", "--out", runs / "ivf", "--kind", "ivf", "--param", "nlist=4")
    assert code == 0 and "ivf index of 60 items" in out and "recall@100 vs exact search" in out
    meta = json.loads((runs / "ivf" / "index.json").read_text())
    assert meta["metric"] == "dot" and 0 < meta["build"]["recall"] <= 1 and meta["build"]["params"]["nlist"] == 4
    code, _, err = cli("index", "--run", runs / "dlrm", "--out", runs / "bad")
    assert code != 0 and "has no item tower; index a two-tower run" in err and not (runs / "bad").exists()


def test_retrieval_is_the_exact_top_of_the_towers_dot_products(runs, funnel):
    from recfunnel.retrieval.embeddings import tower_embeddings

    _, items = tower_embeddings(funnel.retriever, "item")
    _, users = tower_embeddings(funnel.retriever, "user")
    scores, ids = funnel.index.vectors.search(users[:5], 10)
    want = np.argsort(-(users[:5] @ items.T), axis=1, kind="stable")[:, :10]
    assert np.array_equal(ids, funnel.items.raw_ids[want])
    assert np.allclose(scores, np.take_along_axis(users[:5] @ items.T, want, 1), atol=1e-4)


def test_a_known_user_gets_unseen_items_through_every_stage(funnel):
    user = known_user(funnel)
    rec = funnel.recommend(user_id=user, k=5)
    assert rec.source == "user" and len(rec.items) == 5
    assert set(rec.timings) == {"retrieve", "filter", "rank", "rerank"} and all(t >= 0 for t in rec.timings.values())
    index = funnel.users.index[funnel.user_rows.get_loc(user)]
    seen = set(funnel.items.raw_ids[funnel.items.positions_of(funnel.interactions.seen(int(index)))].tolist())
    assert seen and not seen & {item for item, _ in rec.items}


def test_exclude_drops_items_and_unknown_ids_only_warn(funnel):
    user = known_user(funnel, 1)
    first = funnel.recommend(user_id=user, k=5)
    drop = [first.items[0][0], first.items[2][0]]
    again = funnel.recommend(user_id=user, k=5, exclude=drop + [987654])
    assert not set(drop) & {i for i, _ in again.items} and len(again.items) == 5
    assert any("987654" in w for w in again.warnings)


def test_ranking_orders_candidates_by_the_rankers_score(funnel):
    ranked = funnel.variant(rerank="none").recommend(user_id=known_user(funnel, 2), k=10)
    scores = [s for _, s in ranked.items]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)  # probabilities
    retrieved = funnel.variant(rank=False, rerank="none").recommend(user_id=known_user(funnel, 2), k=10)
    assert "rank" not in retrieved.timings and [i for i, _ in retrieved.items] != [i for i, _ in ranked.items]


def test_mmr_trades_relevance_for_diversity():
    scores = np.array([1.0, 0.99, 0.98, 0.5])
    genres = [np.array([1]), np.array([1]), np.array([1]), np.array([2])]
    assert mmr(scores, genres, 4, 1.0).tolist() == [0, 1, 2, 3]  # relevance only
    assert mmr(scores, genres, 2, 0.3).tolist() == [0, 3]  # the other genre comes second
    assert jaccard([np.array([1, 2]), np.array([2, 3]), np.array([], np.int64)]).tolist() == [
        [1.0, pytest.approx(1 / 3), 0.0],
        [pytest.approx(1 / 3), 1.0, 0.0],
        [0.0, 0.0, 0.0],
    ]


def test_mmr_of_several_lists_at_once_picks_what_each_list_alone_does():
    rng = np.random.default_rng(0)
    for _ in range(50):
        lengths = rng.integers(2, 60, rng.integers(1, 10))
        scores = [np.round(rng.random(n), 1).astype(np.float32) for n in lengths]  # ties included
        scores[0][:] = 0.5  # all equal: relevance 1 for every candidate
        members = [(rng.random((n, 7)) < 0.3).astype(np.float32) for n in lengths]
        ks = rng.integers(1, 70, len(lengths)).tolist()  # some over their list's length
        lam = float(rng.choice([0.0, 0.3, 0.8, 1.0]))
        together = mmr_many(scores, members, ks, lam)
        alone = [mmr(s, m, k, lam) for s, m, k in zip(scores, members, ks)]
        assert [c.tolist() for c in together] == [c.tolist() for c in alone]
        assert all(len(c) == min(k, n) and len(set(c.tolist())) == len(c) for c, k, n in zip(together, ks, lengths))


def test_rerank_diversifies_over_the_items_tags(funnel):
    """MMR lowers what it trades relevance against: the top k's mean pairwise tag similarity."""

    def similarity(f, user):
        items = [i for i, _ in f.recommend(user_id=user, k=6).items]
        pairs = jaccard_of_members(funnel._genre_sets(funnel.item_rows.get_indexer(items)))
        return float(pairs[np.triu_indices(len(items), 1)].mean())

    assert funnel.diversity == "tags"
    users = [known_user(funnel, n) for n in range(1, 9)]
    diverse = [similarity(funnel.variant(mmr_lambda=0.1), u) for u in users]
    plain = [similarity(funnel.variant(rerank="none"), u) for u in users]
    assert sum(diverse) < sum(plain)


def test_rules_keep_or_drop_items_by_feature(runs):
    dropped = Funnel.load(
        runs / "tt", index=runs / "index", config=funnel_config(overrides=["rules=[{feature: tags, exclude: [t1]}]"])
    )
    t1 = dropped.encoder.indices("tags", ["t1"])[0]
    for n in range(5):
        items = [i for i, _ in dropped.recommend(user_id=known_user(dropped, n), k=10).items]
        assert items and not dropped._genre_sets(dropped.item_rows.get_indexer(items))[:, t1].any()
    with pytest.raises(Exception, match="rules\\[0\\].feature: 'colour' is not a categorical item feature"):
        Funnel.load(
            runs / "tt",
            index=runs / "index",
            config=funnel_config(overrides=["rules=[{feature: colour, exclude: [x]}]"]),
        )


def test_cold_start_uses_features_else_most_popular(funnel):
    by_features = funnel.recommend(user_id="someone-new", k=5, features={"segment": 1.0, "shoe_size": 44})
    assert by_features.source == "features" and len(by_features.items) == 5
    assert any("someone-new" in w for w in by_features.warnings) and any("shoe_size" in w for w in by_features.warnings)
    popular = funnel.recommend(user_id="someone-new", k=5, exclude=[by_features.items[0][0]])
    assert popular.source == "popular"
    order = np.argsort(-funnel.interactions.popularity, kind="stable")
    want = [
        i for i in funnel.items.raw_ids[funnel.items.positions_of(order[:7])].tolist() if i != by_features.items[0][0]
    ][:5]
    assert [i for i, _ in popular.items] == want


def test_similar_items_leave_the_item_out(funnel):
    item = funnel.items.raw_ids[0].item()
    similar = funnel.similar_items(item, 5)
    assert len(similar) == 5 and item not in [i for i, _ in similar]
    with pytest.raises(KeyError):
        funnel.similar_items(10**9)


def test_batch_recommend_writes_every_user_top_k(cli, runs, tmp_path, funnel):
    out = tmp_path / "recs.parquet"
    code, stdout, _ = cli(
        "recommend", "--run", runs / "tt", "--ranker", runs / "dlrm", "--index", runs / "index", "--k", 7, "--out", out
    )
    assert code == 0 and "recommendations for" in stdout
    recs = pd.read_parquet(out)
    assert list(recs.columns) == ["user_id", "rank", "item_id", "score"]
    assert recs["user_id"].nunique() == len(funnel.users)
    unseen = {
        u.item(): len(funnel.items) - len(set(funnel.interactions.seen(int(i)).tolist()))
        for u, i in zip(funnel.users.raw_ids, funnel.users.index)
    }
    sizes = recs.groupby("user_id").size()
    assert all(n == min(7, unseen[u]) for u, n in sizes.items())
    assert all(ranks == list(range(1, len(ranks) + 1)) for ranks in recs.groupby("user_id")["rank"].apply(list))
    # the same lists as online requests
    first = recs[recs.user_id == known_user(funnel)]  # has at least 7 unseen items
    assert first["item_id"].tolist() == [i for i, _ in funnel.recommend(user_id=known_user(funnel), k=7).items]
    assert [p.name for p in tmp_path.iterdir()] == ["recs.parquet"]  # no temp file left
    users = tmp_path / "users.txt"
    users.write_text(f"{known_user(funnel)}\nnobody\n")
    code, _, _ = cli(
        "recommend",
        "--run",
        runs / "tt",
        "--index",
        runs / "index",
        "--k",
        3,
        "--out",
        out,
        "--users",
        users,
        "--overwrite",
        "--quiet",
    )
    listed = pd.read_parquet(out)
    assert code == 0 and listed["user_id"].astype(str).unique().tolist() == [str(known_user(funnel)), "nobody"]
    code, _, err = cli("recommend", "--run", runs / "tt", "--index", runs / "index", "--out", out)
    assert code != 0 and "already exists; pass --overwrite" in err


def test_evaluate_compares_retrieval_alone_with_ranking(cli, runs):
    code, out, _ = cli("evaluate", "--run", runs / "tt", "--ranker", runs / "dlrm", "--index", runs / "index", "--json")
    result = json.loads(out)
    assert code == 0 and set(result["variants"]) == {"most_popular", "ease", "retrieval", "retrieval+ranking", "funnel"}
    for metrics in result["variants"].values():
        assert 0 <= metrics["recall_at_10"] <= metrics["recall_at_20"] <= 1 and 0 <= metrics["ndcg_at_20"] <= 1
    # retrieval alone through the index equals the two-tower's own test metrics from training
    trained = json.loads((runs / "tt" / "metrics.json").read_text())["test"]
    assert result["variants"]["retrieval"]["recall_at_20"] == pytest.approx(trained["recall_at_20"], abs=1e-6)
    # EASE, fitted on the same training rows, finds the planted tastes better than popularity does
    assert result["variants"]["ease"]["ndcg_at_20"] > result["variants"]["most_popular"]["ndcg_at_20"]
    # MMR re-ranking buys genre variety: the intra-list diversity of the top 10 goes up
    variants = result["variants"]
    assert 0 <= variants["retrieval+ranking"]["diversity_at_10"] < variants["funnel"]["diversity_at_10"] <= 1
    # each stage's gap, with the interval the evaluated users alone allow
    gaps = {(c["variant"], c["against"]): c for c in result["changes"]}
    assert set(gaps) == {("retrieval", "ease"), ("retrieval+ranking", "retrieval"), ("retrieval+ranking", "ease")}
    for (ours, theirs), gap in gaps.items():
        assert gap["change"] == pytest.approx(variants[ours]["ndcg_at_10"] / variants[theirs]["ndcg_at_10"] - 1)
        assert gap["interval"][0] <= gap["change"] <= gap["interval"][1]


def test_evaluate_logs_the_table_and_the_gaps_to_mlflow(cli, runs):
    import mlflow

    code, out, _ = cli("evaluate", "--run", runs / "tt", "--ranker", runs / "dlrm", "--json", "--mlflow")
    result = json.loads(out)
    logged = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(result["mlflow_run_id"]).data.metrics
    assert code == 0 and logged["retrieval_ndcg_at_10"] == pytest.approx(result["variants"]["retrieval"]["ndcg_at_10"])
    gap = next(c for c in result["changes"] if c["variant"] == "retrieval" and c["against"] == "ease")
    assert logged["retrieval_vs_ease_ndcg_at_10_change"] == pytest.approx(gap["change"])
    assert logged["retrieval_vs_ease_ndcg_at_10_low"] <= gap["change"] <= logged["retrieval_vs_ease_ndcg_at_10_high"]


def test_item_index_round_trip(runs, funnel):
    again = ItemIndex.load(runs / "index")
    users = np.random.default_rng(0).normal(size=(3, again.vectors.dim)).astype(np.float32)
    assert again.meta["kind"] == "exact" and len(again.vectors) == len(funnel.items)
    assert np.array_equal(again.vectors.search(users, 10)[1], funnel.index.vectors.search(users, 10)[1])


@pytest.mark.slow
def test_recommend_over_spark_gives_the_same_lists(cli, runs, tmp_path):
    args = ["--run", runs / "tt", "--ranker", runs / "dlrm", "--index", runs / "index", "--k", 5]
    assert cli("recommend", *args, "--out", tmp_path / "local.parquet", "--quiet")[0] == 0
    code, _, err = cli(
        "recommend", *args, "--out", tmp_path / "spark.parquet", "--quiet", "--spark", "--spark-master", "local[2]"
    )
    assert code == 0, err
    local = pd.read_parquet(tmp_path / "local.parquet").sort_values(["user_id", "rank"]).reset_index(drop=True)
    spark = pd.read_parquet(tmp_path / "spark.parquet").sort_values(["user_id", "rank"]).reset_index(drop=True)
    assert local[["user_id", "rank", "item_id"]].equals(spark[["user_id", "rank", "item_id"]])
    assert np.allclose(local["score"], spark["score"], atol=1e-5)


def test_a_request_history_replaces_a_known_users_own(funnel):
    """A client that knows what the user did since training sends it: the user tower sees it."""
    user = known_user(funnel, 5)
    items = funnel.items.raw_ids[:8].tolist()
    own, _ = funnel.user_of(user, None, [])
    notes: list[str] = []
    fresh, source = funnel.user_of(user, {"history": ["no-such-item", *items]}, notes)
    assert source == "user" and fresh.index == own.index and len(notes) == 1 and "no-such-item" in notes[0]
    wanted = funnel.items.index[funnel.item_rows.get_indexer(items)].tolist()  # vocabulary indices
    assert fresh.sparse["history"].tolist() == wanted != own.sparse["history"].tolist()
    assert not np.allclose(funnel._embed([fresh]), funnel._embed([own]))
    assert funnel.recommend(user_id=user, k=10, features={"history": items}).source == "user"


def test_cold_start_features_that_cannot_be_used_are_reported(funnel):
    from recfunnel.errors import RecfunnelError

    rec = funnel.recommend(user_id=None, k=3, features={"segment": 99.0})
    assert rec.source == "features" and any("features.segment: 99.0 is not a known value" in w for w in rec.warnings)
    with pytest.raises(RecfunnelError, match="features.segment: expected one value"):
        funnel.recommend(user_id=None, k=3, features={"segment": [1.0, 2.0]})


def test_batched_requests_get_what_each_gets_alone(funnel):
    """recommend_many (one tower call, one search, one ranker call for all) == recommend one by one,
    over a mix of known users with and without exclusions, a new user by features, an unknown id
    and no user at all."""
    from recfunnel.funnel.pipeline import Request

    users = [u.item() for u in funnel.users.raw_ids[:12]]
    feature = funnel.manifest.roles["user_features"][0]
    requests = [Request(u, k=3 + i % 5) for i, u in enumerate(users)]
    requests[2].exclude = [funnel.items.raw_ids[0].item(), 987654]
    requests += [Request(None, 4), Request(123456789, 4), Request(None, 5, features={feature: 1})]
    batched = funnel.recommend_many(requests)
    alone = [funnel.recommend(r.user_id, r.k, r.exclude, r.features) for r in requests]
    assert {b.source for b in batched} == {"user", "popular", "features"}
    for b, a in zip(batched, alone):
        assert [i for i, _ in b.items] == [i for i, _ in a.items] and len(b.items) == len(a.items) > 0
        assert np.allclose([s for _, s in b.items], [s for _, s in a.items], rtol=1e-5, atol=1e-6)
        assert (b.source, b.warnings, b.batch) == (a.source, a.warnings, len(requests))
    assert funnel.recommend_many([]) == []
