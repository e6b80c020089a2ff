"""What the serve tests share: a tiny synthetic interactions dataset with a two-tower, a DLRM (also
registered in the test MLflow store) and an exact index trained on it once per session, a real
server on them per test module, and a stand-in funnel for quick in-process tests of the app."""

import uuid
from types import SimpleNamespace

import httpx
import numpy as np
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
REGISTERED = f"serve-test-{uuid.uuid4().hex[:8]}"  # the DLRM's registered name in the test MLflow store


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
def known(runs):
    """Raw ids of the users and items of the training data."""
    import pandas as pd

    users = pd.read_parquet(runs / "two-tower" / "model" / "users.parquet")["user_id"].tolist()
    items = pd.read_parquet(runs / "two-tower" / "model" / "items.parquet")["item_id"].tolist()
    return {"users": users, "items": items}


def recommend(client, **body):
    return client.post("/recommend", json=body)


class _Vectors:
    kind = "exact"

    def __len__(self) -> int:
        return 5


class StubFunnel:
    """What the app uses of a Funnel: items 1..5, one known user (7), one user feature (segment).
    ``calls`` records the size of every batch it was given."""

    def __init__(self):
        self.users, self.items = SimpleNamespace(raw_ids=np.array([7])), SimpleNamespace(raw_ids=np.arange(1, 6))
        self.index, self.ranker = SimpleNamespace(vectors=_Vectors()), None
        self.manifest = SimpleNamespace(
            roles={"user_features": ["segment"]}, dense=[], feature=lambda name: SimpleNamespace(multi_hot=False)
        )
        self.calls: list[int] = []

    def recommend_many(self, requests):
        from recfunnel.funnel.pipeline import Recommendation

        self.calls.append(len(requests))
        return [
            Recommendation(
                [(i, 1 / i) for i in range(1, 6) if i not in r.exclude][: r.k],
                {"retrieve": 0.1},
                "user" if r.user_id == 7 else "popular",
                [],
                batch=len(requests),
            )
            for r in requests
        ]

    def similar_items(self, item_id, k=10):
        if item_id not in range(1, 6):
            raise KeyError(item_id)
        return [(i, 0.5) for i in range(1, 6) if i != item_id][:k]


def ask(app, *requests: tuple[str, str, dict | None], together: bool = False) -> list[httpx.Response]:
    """Requests (method, path, JSON body) to ``app`` in-process, through httpx's ASGI transport
    (Starlette's TestClient warns that it will stop taking httpx), one after the other or all at
    once (``together``), with the app's lifespan run around them."""
    import asyncio

    async def run() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as test_client:
                calls = [test_client.request(method, path, json=body) for method, path, body in requests]
                if together:
                    return list(await asyncio.gather(*calls))
                return [await call for call in calls]

    return asyncio.run(run())
