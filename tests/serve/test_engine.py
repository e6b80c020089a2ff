"""The funnel in a process of its own (what `serve` runs), on a stand-in funnel: same answers as
on the loop's thread, a new version is loaded by a new process that takes over, and closing the
engine ends its processes."""

import asyncio
import os

from recfunnel.funnel.pipeline import Request
from recfunnel.serve.app import create_app
from recfunnel.serve.engine import Failed, InlineEngine, ProcessEngine, Similar
from recfunnel.serve.live import Live, Served
from tests.serve.conftest import StubFunnel, ask


class FileVersions:
    """A model source whose version is the text of a file (a broken version: 'broken ...')."""

    def __init__(self, path):
        self.path = path

    def versions(self):
        return {"model": self.path.read_text()}

    def load(self, versions, first=False):
        if versions["model"].startswith("broken"):
            raise RuntimeError("cannot load the weights")
        return Served(StubFunnel(), f"stub {versions['model']}", dict(versions))


def started(tmp_path, version="v1"):
    source = FileVersions(tmp_path / "version")
    source.path.write_text(version)
    live = Live(source.load(source.versions()))
    engine = ProcessEngine(live, source)
    engine.start()
    return engine


JOBS = [Request(7, 3, [1]), Request(None, 2), Similar(2, 2), Similar(99, 2)]


def outcome(answer):
    if isinstance(answer, Exception):
        return type(answer).__name__
    result, version = answer
    return (result.items if hasattr(result, "items") else result), version


def test_a_batch_gets_the_same_answers_in_the_funnel_process_as_inline(tmp_path):
    engine = started(tmp_path)
    live = Live(Served(StubFunnel(), "stub v1"))
    first = engine.pid

    async def run():
        engine.attach(asyncio.get_running_loop())
        try:
            return await engine.run(JOBS), await InlineEngine(live).run(JOBS), await engine.health()
        finally:
            engine.close()

    remote, inline, health = asyncio.run(run())
    assert [outcome(a) for a in remote] == [outcome(a) for a in inline]
    assert outcome(remote[3]) == "KeyError" and outcome(remote[0])[1] == "stub v1"
    assert health["funnel_pid"] == first != os.getpid() and health["version"] == "stub v1"
    assert not os.path.exists(f"/proc/{first}")  # closed: the process is gone (and reaped)


def test_a_new_version_is_served_by_a_new_process_and_a_broken_one_is_refused(tmp_path):
    engine = started(tmp_path)
    first = engine.pid

    async def run():
        engine.attach(asyncio.get_running_loop())
        try:
            (tmp_path / "version").write_text("v2")
            swapped = await engine.reload()
            after_swap = await engine.run([Request(7, 1)])
            second = engine.pid
            await asyncio.sleep(0.2)  # the old process answered everything: it ends
            first_gone = not os.path.exists(f"/proc/{first}")
            (tmp_path / "version").write_text("broken v3")
            refused = await engine.reload()
            return (
                swapped,
                after_swap,
                second,
                first_gone,
                refused,
                await engine.run([Request(7, 1)]),
                await engine.health(),
            )
        finally:
            engine.close()

    swapped, after_swap, second, first_gone, refused, after_refusal, health = asyncio.run(run())
    assert swapped["reloaded"] and swapped["version"] == "stub v2" and after_swap[0][1] == "stub v2"
    assert second != first and first_gone
    assert not refused["reloaded"] and "cannot load the weights" in refused["error"]
    assert after_refusal[0][1] == "stub v2" and health["funnel_pid"] == second  # the old one keeps serving
    assert health["refused_versions"] == 1 and "cannot load the weights" in health["last_reload_error"]
    assert engine.state.version == "stub v2" and engine.state.reloads == 1 and engine.state.refused == 1
    assert not os.path.exists(f"/proc/{second}")


def test_the_app_on_a_funnel_process_answers_and_says_which_process(tmp_path):
    engine = started(tmp_path)
    first = engine.pid
    app = create_app(engine)
    answer, health = ask(app, ("POST", "/recommend", {"user_id": 7, "k": 2}), ("GET", "/health", None))
    assert answer.json()["items"][0]["item_id"] == 1 and answer.json()["version"] == "stub v1"
    assert health.json()["funnel_pid"] == first and health.json()["funnel_memory_mib"]["rss"] > 0
    assert not os.path.exists(f"/proc/{first}")  # the app's shutdown closed it


def test_a_closed_engine_fails_requests_instead_of_hanging(tmp_path):
    engine = started(tmp_path)

    async def run():
        engine.attach(asyncio.get_running_loop())
        engine.close()
        try:
            await engine.run([Request(7, 1)])
        except Failed as e:
            return str(e)

    assert "stopped" in asyncio.run(run())
