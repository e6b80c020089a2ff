"""Live model updates on a real server: an MLflow alias moved to a new version is swapped in under
load without a failed request, a broken version is refused while the old one keeps serving, and
``--reload-every`` finds a moved alias by itself."""

import threading
import time

import httpx
import pytest

from recfunnel.bench.load import open_loop, request_bytes, run
from recfunnel.serve.process import ServerProcess
from tests.serve.conftest import REGISTERED

pytestmark = pytest.mark.slow
ALIAS = "champion"


@pytest.fixture(scope="module")
def registry(runs):
    from mlflow import MlflowClient

    client = MlflowClient()
    [first] = client.search_model_versions(f"name = '{REGISTERED}'")
    client.set_registered_model_alias(REGISTERED, ALIAS, first.version)
    return client, first


def new_version(registry, source=None):
    client, first = registry
    version = client.create_model_version(REGISTERED, source or first.source, run_id=first.run_id)
    client.set_registered_model_alias(REGISTERED, ALIAS, version.version)
    return version.version


def broken_source(tmp_path, registry):
    """The ranker's logged model with garbage for weights, logged in a run of its own."""
    import mlflow

    client, first = registry
    folder = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{REGISTERED}/{first.version}", dst_path=str(tmp_path)
    )
    (tmp_path / "artifacts" / "model" / "model.pt").write_bytes(b"not a torch file")
    with mlflow.start_run() as broken:
        mlflow.log_artifacts(folder, "model")
    return f"{broken.info.artifact_uri}/model"


def serve(runs, *extra):
    ranker = f"models:/{REGISTERED}@{ALIAS}"
    return ServerProcess(["--run", runs / "two-tower", "--ranker", ranker, "--index", runs / "index", *extra])


def test_a_moved_alias_is_swapped_in_under_load_without_a_failed_request(runs, known, registry, tmp_path):
    first = registry[1].version
    bodies = [request_bytes("127.0.0.1", "/recommend", {"user_id": u, "k": 5}) for u in known["users"][:50]]
    with serve(runs) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        assert f"version {first}" in client.get("/health").json()["version"]
        second = new_version(registry)
        records = []
        load = threading.Thread(
            target=lambda: records.extend(run(open_loop(server.url, bodies, 100, 6, keep_body=10**6)))
        )
        load.start()
        time.sleep(1.5)
        swapped = client.post("/admin/reload").json()
        load.join()
        assert swapped["reloaded"] and f"version {second}" in swapped["version"] and swapped["error"] is None
        assert len(records) == 600 and [r.status for r in records if r.status != 200] == []
        served = [httpx.Response(200, content=r.body).json()["version"] for r in records]
        assert f"version {first}" in served[0] and f"version {second}" in served[-1]  # before, then after

        new_version(registry, broken_source(tmp_path, registry))
        refused = client.post("/admin/reload").json()
        assert not refused["reloaded"] and "refused" in refused["error"] and f"version {second}" in refused["version"]
        health = client.get("/health").json()
        assert health["refused_versions"] == 1 and health["reloads"] == 1 and "refused" in health["last_reload_error"]
        answer = client.post("/recommend", json={"user_id": known["users"][0], "k": 3})
        assert answer.status_code == 200 and f"version {second}" in answer.json()["version"]
        metrics = client.get("/metrics").text
        assert 'recfunnel_reloads_total{result="ok"} 1' in metrics
        assert 'recfunnel_reloads_total{result="refused"} 1' in metrics


def test_reload_every_finds_a_moved_alias_by_itself(runs, registry):
    new_version(registry)  # a good one (the test before left the alias on a broken one)
    with serve(runs, "--reload-every", "0.5") as server, httpx.Client(base_url=server.url, timeout=30) as http:
        before = http.get("/health").json()["version"]
        newer = new_version(registry)
        for _ in range(200):
            health = http.get("/health").json()
            if f"version {newer}" in health["version"]:
                break
            time.sleep(0.1)
        assert f"version {newer}" in health["version"] and health["version"] != before and health["reloads"] == 1
