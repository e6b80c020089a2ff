"""`recfunnel serve` end to end: a real server process on loopback, a real HTTP client.

One tiny synthetic interactions dataset, a two-tower and a DLRM trained on it for a few steps, an
exact index; one server for the module (and one more loading both models from MLflow URIs).
"""

import json
import uuid

import httpx
import pytest

from recfunnel.serve.process import ServerProcess

FAST = [
    "--set",
    "train.epochs=1",
    "--set",
    "train.batch_size=256",
    "--set",
    "train.max_steps=8",
    "--set",
    "eval.baselines=false",
    "--set",
    "tracking.log_checkpoints=false",
]
MAX_K = 1000
REGISTERED = f"serve-test-{uuid.uuid4().hex[:8]}"  # the DLRM's registered name in the test MLflow store
LIMIT = 64 * 1024

slow = pytest.mark.slow  # every test of a real server (the module's fixtures train two models)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from recfunnel.cli import main
    from recfunnel.data.sources.synthetic_interactions import prepare_synthetic_interactions

    root = tmp_path_factory.mktemp("serve")
    # 300 items for 200 users of ~30 interactions: every user has most items left to recommend
    prepare_synthetic_interactions(6000, root / "pairs", users=200, items=300, quiet=True)
    for model, extra in (("two-tower", []), ("dlrm", ["--set", f"tracking.register_as={REGISTERED}"])):
        assert (
            main(["train", "--model", model, "--data", str(root / "pairs"), "--out", str(root / model), *FAST, *extra])
            == 0
        )
    assert main(["index", "--run", str(root / "two-tower"), "--out", str(root / "index"), "--quiet"]) == 0
    return root


@pytest.fixture(scope="module")
def server(runs):
    with ServerProcess(["--run", runs / "two-tower", "--ranker", runs / "dlrm", "--index", runs / "index"]) as server:
        yield server


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def known(runs):
    """Raw ids of the users and items of the training data."""
    import pandas as pd

    users = pd.read_parquet(runs / "two-tower" / "model" / "users.parquet")["user_id"].tolist()
    items = pd.read_parquet(runs / "two-tower" / "model" / "items.parquet")["item_id"].tolist()
    return {"users": users, "items": items}


def recommend(client, **body):
    return client.post("/recommend", json=body)


# --- what the service answers ----------------------------------------------------------------


@slow
def test_a_known_user_gets_k_ranked_items_and_stage_timings(client, known):
    response = recommend(client, user_id=known["users"][0], k=5)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user_id"] == known["users"][0] and body["source"] == "user" and body["warnings"] == []
    assert [item["rank"] for item in body["items"]] == [1, 2, 3, 4, 5]
    assert all(item["item_id"] in known["items"] for item in body["items"])
    assert len({item["item_id"] for item in body["items"]}) == 5
    assert all(isinstance(item["score"], float) for item in body["items"])
    assert {"retrieve", "filter", "rank", "rerank", "queue", "total"} <= set(body["timings_ms"])
    assert all(ms >= 0 for ms in body["timings_ms"].values())


@slow
def test_the_same_request_gets_the_same_answer(client, known):
    first, second = (recommend(client, user_id=known["users"][1], k=8).json() for _ in range(2))
    assert first["items"] == second["items"]


@slow
def test_excluded_items_are_left_out(client, known):
    user = known["users"][2]
    before = [item["item_id"] for item in recommend(client, user_id=user, k=10).json()["items"]]
    response = recommend(client, user_id=user, k=10, exclude=before[:3])
    after = [item["item_id"] for item in response.json()["items"]]
    assert response.status_code == 200 and len(after) == 10
    assert not set(after) & set(before[:3])


@slow
def test_unknown_exclude_ids_are_a_warning_not_an_error(client, known):
    response = recommend(client, user_id=known["users"][0], k=3, exclude=["no-such-item", 10**9])
    assert response.status_code == 200
    assert any("no-such-item" in w for w in response.json()["warnings"])


@slow
def test_an_unknown_user_with_features_is_embedded_from_them(client):
    response = recommend(client, user_id="newcomer", k=4, features={"segment": 1})
    body = response.json()
    assert response.status_code == 200 and body["source"] == "features" and len(body["items"]) == 4
    assert any("newcomer" in w for w in body["warnings"])
    anonymous = recommend(client, user_id=None, k=4, features={"segment": 1}).json()
    assert anonymous["source"] == "features" and anonymous["items"] == body["items"]


@slow
def test_an_unknown_user_without_features_gets_popular_items(client):
    body = recommend(client, user_id=None, k=6).json()
    assert body["source"] == "popular" and len(body["items"]) == 6
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert recommend(client, user_id=-12345, k=6).json()["items"] == body["items"]


@slow
def test_similar_items_of_a_known_item_and_404_for_an_unknown_one(client, known):
    item = known["items"][0]
    response = client.get(f"/similar-items/{item}", params={"k": 5})
    body = response.json()
    assert response.status_code == 200 and body["item_id"] == item
    assert len(body["items"]) == 5 and item not in [i["item_id"] for i in body["items"]]
    missing = client.get("/similar-items/no-such-item")
    assert missing.status_code == 404 and "no-such-item" in missing.json()["error"]


@slow
def test_health_says_what_is_loaded(client, known):
    assert client.get("/health").json() == {
        "status": "ok",
        "items": len(known["items"]),
        "ranker": True,
        "index": "exact",
    }


@slow
def test_metrics_count_requests_by_route_and_status(client, known):
    def count(text: str, route: str, status: int) -> float:
        prefix = f'recfunnel_http_requests_total{{route="{route}",method="POST",status="{status}"}} '
        return sum(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))

    before = client.get("/metrics").text
    recommend(client, user_id=known["users"][0], k=2)
    recommend(client, user_id=known["users"][0], k=0)
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain; version=0.0.4")
    after = response.text
    assert count(after, "/recommend", 200) == count(before, "/recommend", 200) + 1
    assert count(after, "/recommend", 422) == count(before, "/recommend", 422) + 1
    assert 'recfunnel_http_request_duration_seconds_bucket{route="/recommend",le="+Inf"}' in after
    assert 'recfunnel_http_request_latency_seconds{route="/recommend",quantile="0.99"}' in after
    assert 'recfunnel_funnel_stage_seconds_count{stage="rank"}' in after


@slow
def test_answers_are_not_held_back_by_nagle(client):
    """The server's socket has TCP_NODELAY: without it every answer waited ~40 ms for a delayed ACK."""
    import statistics
    import time

    times = []
    for _ in range(20):
        start = time.perf_counter()
        client.get("/health")
        times.append(time.perf_counter() - start)
    assert statistics.median(times) < 0.025


# --- every 4xx -------------------------------------------------------------------------------

JSON = {"content-type": "application/json"}
BAD_BODIES = {
    "malformed JSON": ('{"user_id": 1,', 400, "not valid JSON"),
    "not an object": ("[1, 2]", 422, "body: expected a JSON object"),
    "empty body": ("", 422, "body: required"),
    "missing user_id": ('{"k": 5}', 422, "user_id: required"),
    "k = 0": ('{"user_id": 1, "k": 0}', 422, f"k: must be between 1 and {MAX_K}, got 0"),
    "k > max": ('{"user_id": 1, "k": 5000}', 422, f"k: must be between 1 and {MAX_K}, got 5000"),
    "k a string": ('{"user_id": 1, "k": "ten"}', 422, "k: expected an integer, got 'ten'"),
    "k a float": ('{"user_id": 1, "k": 2.5}', 422, "k: expected an integer, got 2.5"),
    "k a boolean": ('{"user_id": 1, "k": true}', 422, "k: expected an integer, got true"),
    "user_id an object": ('{"user_id": {"a": 1}}', 422, "user_id: expected an integer or a string id, got an object"),
    "exclude not a list": ('{"user_id": 1, "exclude": 5}', 422, "exclude: expected a list, got 5"),
    "exclude too long": (
        json.dumps({"user_id": 1, "exclude": list(range(10_001))}),
        422,
        "exclude: at most 10,000 ids, got 10,001",
    ),
    "bad exclude id": ('{"user_id": 1, "exclude": [1, null]}', 422, "exclude.1: expected an integer or a string id"),
    "extra field": ('{"user_id": 1, "kk": 5}', 422, "kk: unknown field"),
    "features not an object": ('{"user_id": 1, "features": [1]}', 422, "features: expected a JSON object"),
    "a nested feature value": ('{"user_id": 1, "features": {"segment": {"a": 1}}}', 422, "features.segment: expected"),
    "a list for a single-hot feature": (
        '{"user_id": 1, "features": {"segment": [1, 2]}}',
        422,
        "features.segment: expected one value",
    ),
}


@slow
@pytest.mark.parametrize("case", BAD_BODIES, ids=list(BAD_BODIES))
def test_a_bad_body_gets_a_4xx_naming_the_problem(client, case):
    body, status, message = BAD_BODIES[case]
    response = client.post("/recommend", content=body, headers=JSON)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error and "\n" not in error and "Traceback" not in error


@slow
def test_a_body_that_is_not_json_gets_415(client):
    response = client.post("/recommend", content="user_id=1", headers={"content-type": "text/plain"})
    assert response.status_code == 415 and "application/json" in response.json()["error"]
    assert client.post("/recommend", data={"user_id": "1"}).status_code == 415  # a form


@slow
def test_an_oversize_body_gets_413_by_its_content_length(client):
    body = json.dumps({"user_id": 1, "exclude": ["x" * 20] * 4000}).encode()
    assert len(body) > LIMIT
    response = client.post("/recommend", content=body, headers=JSON)
    assert response.status_code == 413 and "65,536" in response.json()["error"]


@slow
def test_an_oversize_chunked_body_gets_413_as_it_streams(client):
    def chunks():
        yield b'{"user_id": 1, "exclude": ['
        for _ in range(10):
            yield b'"' + b"x" * 8190 + b'",'
        yield b'"y"]}'

    response = client.post("/recommend", content=chunks(), headers=JSON)
    assert "content-length" not in response.request.headers
    assert response.status_code == 413 and "65,536" in response.json()["error"]


@slow
def test_the_server_still_answers_after_refusing_bodies(client, known):
    assert recommend(client, user_id=known["users"][0], k=1).status_code == 200


@slow
@pytest.mark.parametrize(
    "path, status, message",
    [
        ("/similar-items/1?k=0", 422, f"k: must be between 1 and {MAX_K}, got 0"),
        ("/similar-items/1?k=5000", 422, f"k: must be between 1 and {MAX_K}, got 5000"),
        ("/similar-items/1?k=many", 422, "k: expected an integer, got 'many'"),
        ("/no-such-route", 404, "no route GET /no-such-route"),
        ("/recommend", 405, "GET /recommend: method not allowed; use POST"),
    ],
)
def test_a_bad_get_gets_a_4xx_naming_the_problem(client, path, status, message):
    response = client.get(path)
    assert response.status_code == status and message in response.json()["error"]


# --- models from MLflow ----------------------------------------------------------------------


@slow
def test_models_load_from_mlflow_uris_and_answer_the_same(runs, client, known):
    run_id = json.loads((runs / "two-tower" / "mlflow.json").read_text())["run_id"]
    ranker = f"models:/{REGISTERED}/latest"
    server = ServerProcess(["--run", f"runs:/{run_id}/model", "--ranker", ranker, "--index", runs / "index"])
    with server, httpx.Client(base_url=server.url, timeout=30) as mlflow_client:
        for user in known["users"][:3]:
            ours = mlflow_client.post("/recommend", json={"user_id": user, "k": 5}).json()
            local = recommend(client, user_id=user, k=5).json()
            assert ours["items"] == local["items"]
    assert server.stop() == 0  # SIGTERM: a clean exit


@slow
def test_an_mlflow_model_serves_without_an_index_or_its_dataset(runs, client, known):
    """The logged model folder carries what the funnel needs of the training data (seen items,
    popularity): an exact index is built in memory and the answers are the local server's."""
    run_id = json.loads((runs / "two-tower" / "mlflow.json").read_text())["run_id"]
    server = ServerProcess(["--run", f"runs:/{run_id}/model", "--ranker", f"models:/{REGISTERED}/latest"])
    with server, httpx.Client(base_url=server.url, timeout=30) as mlflow_client:
        for user in known["users"][:3]:
            ours = mlflow_client.post("/recommend", json={"user_id": user, "k": 5}).json()
            assert ours["source"] == "user" and ours["items"] == recommend(client, user_id=user, k=5).json()["items"]


def test_a_missing_run_folder_is_a_one_line_error(cli, tmp_path):
    code, out, err = cli("serve", "--run", tmp_path / "nowhere", "--port", "0")
    assert code == 2 and "nowhere" in err and len(err.strip().splitlines()) == 1


# --- the app in-process, on a stand-in funnel: quick, and failures a real model does not make --


class _Vectors:
    kind = "exact"

    def __len__(self) -> int:
        return 5


class StubFunnel:
    """What the app uses of a Funnel: items 1..5, one known user (7), one user feature (segment)."""

    def __init__(self):
        from types import SimpleNamespace

        import numpy as np

        self.users, self.items = SimpleNamespace(raw_ids=np.array([7])), SimpleNamespace(raw_ids=np.arange(1, 6))
        self.index, self.ranker = SimpleNamespace(vectors=_Vectors()), None
        self.manifest = SimpleNamespace(
            roles={"user_features": ["segment"]}, dense=[], feature=lambda name: SimpleNamespace(multi_hot=False)
        )

    def recommend(self, user_id=None, k=10, exclude=(), features=None):
        from recfunnel.funnel.pipeline import Recommendation

        items = [(i, 1 / i) for i in range(1, 6) if i not in exclude][:k]
        return Recommendation(items, {"retrieve": 0.1}, "user" if user_id == 7 else "popular", [])

    def similar_items(self, item_id, k=10):
        if item_id not in range(1, 6):
            raise KeyError(item_id)
        return [(i, 0.5) for i in range(1, 6) if i != item_id][:k]


def ask(app, *requests: tuple[str, str, dict | None]) -> list[httpx.Response]:
    """Requests (method, path, JSON body) to ``app`` in-process, through httpx's ASGI transport
    (Starlette's TestClient warns that it will stop taking httpx)."""
    import asyncio

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as test_client:
            return [await test_client.request(method, path, json=body) for method, path, body in requests]

    return asyncio.run(run())


def test_the_stub_app_answers_like_the_real_one_and_k_defaults_to_at_most_max_k():
    from recfunnel.serve.app import create_app

    app = create_app(StubFunnel(), max_k=3)
    known, similar, missing, health = ask(
        app,
        ("POST", "/recommend", {"user_id": 7, "exclude": [1]}),
        ("GET", "/similar-items/2", None),
        ("GET", "/similar-items/9", None),
        ("GET", "/health", None),
    )
    assert known.json()["items"] == [
        {"item_id": 2, "score": 0.5, "rank": 1},
        {"item_id": 3, "score": 1 / 3, "rank": 2},
        {"item_id": 4, "score": 0.25, "rank": 3},
    ]
    assert set(known.json()["timings_ms"]) == {"retrieve", "queue", "total"}
    assert [i["item_id"] for i in similar.json()["items"]] == [1, 3, 4] and similar.json()["item_id"] == 2
    assert missing.status_code == 404 and health.json() == {
        "status": "ok",
        "items": 5,
        "ranker": False,
        "index": "exact",
    }


def test_an_internal_error_is_a_one_line_500_and_is_counted(monkeypatch, caplog):
    from recfunnel.serve.app import create_app

    funnel = StubFunnel()
    app = create_app(funnel, max_k=20)

    def broken(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(funnel, "recommend", broken)
    failed, too_many = ask(app, ("POST", "/recommend", {"user_id": 1}), ("POST", "/recommend", {"user_id": 1, "k": 21}))
    assert failed.status_code == 500
    assert failed.json() == {"error": "internal error (RuntimeError); the server log has the details"}
    assert too_many.json()["error"] == "k: must be between 1 and 20, got 21"
    assert app.state.metrics.requests("/recommend", 500) == 1
    assert "secret internals" in caplog.text  # logged here, not sent


def test_a_request_the_funnel_refuses_is_a_422_with_its_message(monkeypatch):
    from recfunnel.errors import DataError
    from recfunnel.serve.app import create_app

    funnel = StubFunnel()
    app = create_app(funnel)

    def refuse(*args, **kwargs):
        raise DataError("features.segment: 'x' is not a value the model knows")

    monkeypatch.setattr(funnel, "recommend", refuse)
    [response] = ask(app, ("POST", "/recommend", {"user_id": None, "features": {"segment": "x"}}))
    assert response.status_code == 422 and response.json() == {
        "error": "features.segment: 'x' is not a value the model knows"
    }


def test_create_app_refuses_bad_limits():
    from recfunnel.serve.app import create_app

    with pytest.raises(ValueError, match="max_k: expected an integer >= 1, got 0"):
        create_app(StubFunnel(), max_k=0)


def test_metrics_text_by_hand():
    from recfunnel.serve.metrics import Metrics

    metrics = Metrics()
    metrics.observe("/recommend", "POST", 200, 0.003)
    metrics.observe("/recommend", "POST", 200, 0.004)
    metrics.observe("/recommend", "POST", 422, 0.0004)
    metrics.observe_funnel("user", {"retrieve": 1.5, "rank": 2.0})
    metrics.observe_funnel("popular", {"retrieve": 0.5})
    lines = set(metrics.render().splitlines())
    assert {
        'recfunnel_http_requests_total{route="/recommend",method="POST",status="200"} 2',
        'recfunnel_http_requests_total{route="/recommend",method="POST",status="422"} 1',
        'recfunnel_http_request_duration_seconds_bucket{route="/recommend",le="0.001"} 1',
        'recfunnel_http_request_duration_seconds_bucket{route="/recommend",le="0.0025"} 1',
        'recfunnel_http_request_duration_seconds_bucket{route="/recommend",le="0.005"} 3',
        'recfunnel_http_request_duration_seconds_bucket{route="/recommend",le="+Inf"} 3',
        'recfunnel_http_request_duration_seconds_sum{route="/recommend"} 0.007400',
        'recfunnel_http_request_duration_seconds_count{route="/recommend"} 3',
        'recfunnel_http_request_latency_seconds{route="/recommend",quantile="0.5"} 0.003000',
        'recfunnel_funnel_stage_seconds_sum{stage="retrieve"} 0.002000',
        'recfunnel_funnel_stage_seconds_count{stage="retrieve"} 2',
        'recfunnel_recommendations_total{source="popular"} 1',
    } <= lines
    assert metrics.requests("/recommend") == 3 and metrics.requests(status=422) == 1


# --- the benchmark ---------------------------------------------------------------------------


@slow
def test_the_serving_benchmark_measures_a_short_load(runs, capsys):
    from recfunnel.bench.serve import bench_serve, print_serve

    result = bench_serve(
        runs / "two-tower",
        ranker=runs / "dlrm",
        index=runs / "index",
        rate=[40, 80],
        seconds=1.0,
        warmup=0.2,
        candidates=50,
    )
    assert [r["rate"] for r in result["runs"]] == [40, 80]
    for r in result["runs"]:
        assert r["errors"] == 0 and r["ok"] + r["dropped"] == r["scheduled"] == round(r["rate"])
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert {"retrieve", "filter", "rank", "rerank", "queue", "total"} <= set(r["server_stage_ms"])
    print_serve(result)
    assert "p99 ms" in capsys.readouterr().out
