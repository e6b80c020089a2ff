"""`recfunnel serve` end to end: a real server process on loopback, a real HTTP client.

On the session's tiny two-tower + DLRM funnel (conftest): one server for the module, and more
loading both models from MLflow URIs.
"""

import json
import socket
import time

import httpx
import pytest

from recfunnel.serve.process import ServerProcess
from tests.serve.conftest import REGISTERED, recommend

MAX_K = 1000
LIMIT = 64 * 1024

slow = pytest.mark.slow  # every test of a real server (the session's fixtures train two models)


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
def test_health_says_what_is_loaded_and_by_which_processes(server, client, known):
    body = client.get("/health").json()
    assert {k: body[k] for k in ("status", "items", "ranker", "index", "reloads", "refused_versions")} == {
        "status": "ok",
        "items": len(known["items"]),
        "ranker": True,
        "index": "exact",
        "reloads": 0,
        "refused_versions": 0,
    }
    assert body["version"].startswith("two-tower ") and " + dlrm " in body["version"] and "digest " in body["version"]
    assert body["pid"] == server.process.pid and body["funnel_pid"] not in (None, body["pid"])
    assert body["memory_mib"]["rss"] > 0 and body["funnel_memory_mib"]["pss"] > 0


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


@slow
@pytest.mark.parametrize("item", ["9" * 309, "9" * 5000, "-" + "9" * 30, "1e400", "NaN"])
def test_an_item_id_that_cannot_exist_is_a_404_never_a_500(client, item):
    response = client.get(f"/similar-items/{item}")
    assert response.status_code == 404 and "not in the catalogue" in response.json()["error"]


@slow
@pytest.mark.parametrize("user", [10**308, -(10**30), "9" * 5000])
def test_a_user_id_that_cannot_exist_is_an_unknown_user(client, user):
    response = recommend(client, user_id=user, k=3)
    assert response.status_code == 200 and response.json()["source"] == "popular"


@slow
def test_a_user_id_of_thousands_of_digits_is_a_4xx(client):
    response = client.post("/recommend", content='{"user_id": ' + "9" * 5000 + "}", headers=JSON)
    assert response.status_code in (400, 422) and "\n" not in response.json()["error"]


@slow
def test_a_client_gone_mid_body_is_counted_as_499_not_500(server, client):
    def count(status: int) -> float:
        prefix = f'recfunnel_http_requests_total{{route="/recommend",method="POST",status="{status}"}} '
        text = client.get("/metrics").text
        return sum(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))

    before = count(499), count(500)
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /recommend HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n")
        sock.sendall(b'content-length: 100\r\n\r\n{"user_id": 1')  # then hangs up
    for _ in range(100):
        if count(499) > before[0]:
            break
        time.sleep(0.05)
    assert (count(499), count(500)) == (before[0] + 1, before[1])


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
