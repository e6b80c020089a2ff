"""The app in-process, on a stand-in funnel: quick, and failures a real model does not make."""

import pytest

from recfunnel.serve.app import Batching, create_app
from tests.serve.conftest import StubFunnel, ask


def test_the_stub_app_answers_like_the_real_one_and_k_defaults_to_at_most_max_k():
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
    assert known.json()["version"] == "loaded in-process" and known.json()["batch"] == 1
    assert [i["item_id"] for i in similar.json()["items"]] == [1, 3, 4] and similar.json()["item_id"] == 2
    assert missing.status_code == 404
    body = health.json()
    assert {k: body[k] for k in ("status", "items", "ranker", "index", "version", "reloads")} == {
        "status": "ok",
        "items": 5,
        "ranker": False,
        "index": "exact",
        "version": "loaded in-process",
        "reloads": 0,
    }
    assert body["funnel_pid"] is None and body["memory_mib"]["rss"] > 0


def test_concurrent_requests_go_through_the_funnel_together_and_each_gets_its_own_answer():
    funnel = StubFunnel()
    app = create_app(funnel, batching=Batching(max_batch=4, max_wait_ms=50))
    requests = [("POST", "/recommend", {"user_id": 7, "k": 5, "exclude": [i]}) for i in range(1, 5)]
    answers = ask(app, *requests, together=True)
    assert all(a.status_code == 200 for a in answers)
    for i, answer in enumerate(answers, 1):
        assert answer.json()["batch"] == 4
        assert [item["item_id"] for item in answer.json()["items"]] == [j for j in range(1, 6) if j != i]
    assert funnel.calls[-1] == 4  # one call for the four (warm-up calls before it)
    assert app.state.batcher.stats.sizes == {4: 1}


def test_beyond_the_queue_bound_requests_get_503_with_retry_after_and_are_counted():
    app = create_app(StubFunnel(), batching=Batching(max_batch=64, max_wait_ms=200, max_queue=2))
    answers = ask(app, *[("POST", "/recommend", {"user_id": 7, "k": 2})] * 5, together=True)
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200, 200, 503, 503, 503]
    refused = next(a for a in answers if a.status_code == 503)
    assert refused.headers["retry-after"] == "1" and "overloaded" in refused.json()["error"]
    assert app.state.metrics.requests("/recommend", 503) == 3
    assert 'recfunnel_refused_total{reason="arrival"} 3' in app.state.metrics.render()


def test_an_internal_error_is_a_one_line_500_and_is_counted(monkeypatch, caplog):
    funnel = StubFunnel()
    app = create_app(funnel, max_k=20)

    def broken(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(funnel, "recommend_many", broken)
    failed, too_many = ask(app, ("POST", "/recommend", {"user_id": 1}), ("POST", "/recommend", {"user_id": 1, "k": 21}))
    assert failed.status_code == 500
    assert failed.json() == {"error": "internal error (RuntimeError); the server log has the details"}
    assert too_many.json()["error"] == "k: must be between 1 and 20, got 21"
    assert app.state.metrics.requests("/recommend", 500) == 1
    assert "secret internals" in caplog.text  # logged here, not sent


def test_one_failing_request_does_not_fail_the_others_of_its_batch(monkeypatch):
    funnel = StubFunnel()
    app = create_app(funnel, batching=Batching(max_batch=3, max_wait_ms=50))
    real = funnel.recommend_many

    def fails_on_user_13(requests):
        if any(r.user_id == 13 for r in requests):
            raise RuntimeError("user 13")
        return real(requests)

    monkeypatch.setattr(funnel, "recommend_many", fails_on_user_13)
    answers = ask(app, *[("POST", "/recommend", {"user_id": u, "k": 2}) for u in (7, 13, 8)], together=True)
    assert [a.status_code for a in answers] == [200, 500, 200]


def test_a_request_the_funnel_refuses_is_a_422_with_its_message(monkeypatch):
    from recfunnel.errors import DataError

    funnel = StubFunnel()
    app = create_app(funnel)

    def refuse(*args, **kwargs):
        raise DataError("features.segment: 'x' is not a value the model knows")

    monkeypatch.setattr(funnel, "recommend_many", refuse)
    [response] = ask(app, ("POST", "/recommend", {"user_id": None, "features": {"segment": "x"}}))
    assert response.status_code == 422 and response.json() == {
        "error": "features.segment: 'x' is not a value the model knows"
    }


@pytest.mark.parametrize("item", ["9" * 309, "9" * 5000, "-" + "9" * 25, "１２"])
def test_an_item_id_that_cannot_exist_is_a_404(item):
    [response] = ask(create_app(StubFunnel()), ("GET", f"/similar-items/{item}", None))
    assert response.status_code == 404 and "not in the catalogue" in response.json()["error"]


def test_reload_is_answered_on_loopback_only_and_409_without_a_way_to_reload():
    app = create_app(StubFunnel())
    [response] = ask(app, ("POST", "/admin/reload", None))  # httpx's ASGI client is 127.0.0.1
    assert response.status_code == 409
    calls = []
    app = create_app(
        StubFunnel(), reload=lambda: calls.append(1) or {"reloaded": False, "version": "v", "error": None, "workers": 1}
    )
    [response] = ask(app, ("POST", "/admin/reload", None))
    assert response.status_code == 200 and response.json()["reloaded"] is False and calls == [1]


def test_reload_from_another_host_is_403():
    import asyncio

    import httpx

    app = create_app(StubFunnel(), reload=lambda: {"reloaded": False, "version": "v", "error": None, "workers": 1})

    async def run():
        transport = httpx.ASGITransport(app=app, client=("192.0.2.7", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as c:
            return await c.post("/admin/reload")

    response = asyncio.run(run())
    assert response.status_code == 403 and "192.0.2.7" in response.json()["error"]


def test_create_app_refuses_bad_limits():
    with pytest.raises(ValueError, match="max_k: expected an integer >= 1, got 0"):
        create_app(StubFunnel(), max_k=0)
