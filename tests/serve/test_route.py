"""POST /recommend answered in front of FastAPI: the same answers, and every refused body passed on."""

import asyncio

import httpx
import pytest

from recfunnel.serve.app import create_app
from tests.serve.conftest import StubFunnel

BODIES = [
    b'{"user_id": 7, "k": 3, "exclude": [1]}',
    b'{"user_id": 7}',
    b'{"user_id": null, "features": {"segment": "a"}}',
    b'{"user_id": "7", "k": 2}',
    b'{"user_id": 123456789012345678901234567890}',  # beyond 64 bits, echoed back
    b'{"user_id": 7, "user_id": 8}',
    b'{"user_id": 7, "k": 5000}',
    b'{"user_id": 7, "k": "3"}',
    b'{"user_id": 7, "k": true}',
    b'{"user_id": 7, "k": 3.0}',
    b'{"user_id": 1.5}',
    b'{"user_id": 7, "colour": "red"}',
    b'{"user_id": NaN}',
    b'{"user_id": 7, "exclude": [true]}',
    b'{"user_id": 7, "features": {"segment": {"a": 1}}}',
    b"{",
    b"[1]",
    b"",
    b"null",
    b'{"k": 2}',
]


def _post_all(app, bodies: list[bytes], content_type: str = "application/json", chunked: bool = False):
    """Each body in a POST /recommend, with its length declared (or sent in chunks)."""

    async def chunks(body: bytes):
        yield body

    async def run() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                return [
                    await client.post(
                        "/recommend", content=chunks(body) if chunked else body, headers={"content-type": content_type}
                    )
                    for body in bodies
                ]

    return asyncio.run(run())


def _passed_on(app) -> list[str]:
    """Records the requests the route passes on to FastAPI."""
    route = app.front.app.app
    inner, calls = route.app, []

    async def counted(scope, receive, send):
        calls.append(scope["path"])
        await inner(scope, receive, send)

    route.app = counted
    return calls


def test_the_route_answers_every_body_as_fastapi_does_and_passes_on_those_it_refuses():
    fast_app, slow_app = create_app(StubFunnel()), create_app(StubFunnel())
    passed_on = _passed_on(fast_app)
    fast = _post_all(fast_app, BODIES)
    slow = _post_all(slow_app, BODIES, "application/json; charset=utf-8")  # not the route's: FastAPI's
    for body, a, b in zip(BODIES, fast, slow, strict=True):
        assert a.status_code == b.status_code, body
        if a.status_code == 200:
            a_json, b_json = a.json(), b.json()
            a_json["timings_ms"].pop("total"), b_json["timings_ms"].pop("total")
            a_json["timings_ms"].pop("queue"), b_json["timings_ms"].pop("queue")
            assert a_json == b_json, body
        else:
            assert a.json() == b.json(), body
        assert a.headers["content-type"] == b.headers["content-type"] == "application/json"
    answered = sum(a.status_code == 200 for a in fast)
    assert answered >= 6 and len(passed_on) == len(BODIES) - answered
    assert fast_app.state.metrics.requests("/recommend", 200) == answered


def test_an_error_out_of_the_funnel_on_the_route_is_answered_by_the_apps_handlers(monkeypatch, caplog):
    funnel = StubFunnel()
    app = create_app(funnel)
    passed_on = _passed_on(app)

    def broken(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(funnel, "recommend_many", broken)
    [answer] = _post_all(app, [b'{"user_id": 7}'])
    assert answer.status_code == 500 and passed_on == []
    assert answer.json() == {"error": "internal error (RuntimeError); the server log has the details"}
    assert "secret internals" in caplog.text and app.state.metrics.requests("/recommend", 500) == 1


@pytest.mark.parametrize(
    ("content_type", "chunked", "status"), [("application/json", True, 200), ("text/plain", False, 415)]
)
def test_a_chunked_or_non_json_body_goes_to_fastapi(content_type, chunked, status):
    app = create_app(StubFunnel())
    passed_on = _passed_on(app)
    [answer] = _post_all(app, [b'{"user_id": 7}'], content_type, chunked)
    assert passed_on == ["/recommend"] and answer.status_code == status
