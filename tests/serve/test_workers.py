"""`serve --workers 2` on a real server: two worker processes answer on one port, each with its
funnel process, memory reported per worker; SIGTERM drains them (what is in flight is answered)
and leaves no process behind."""

import os
import signal
import threading
import time

import httpx
import pytest

from recfunnel.bench.load import open_loop, request_bytes, run
from recfunnel.serve.process import ServerProcess
from recfunnel.serve.workers import children_of

pytestmark = pytest.mark.slow


def test_two_workers_answer_on_one_port_and_drain_on_sigterm(runs, known):
    args = ["--run", runs / "two-tower", "--ranker", runs / "dlrm", "--index", runs / "index", "--workers", "2"]
    server = ServerProcess(args)
    with server:
        assert "2 workers" in server.log("stdout")
        workers = children_of(server.process.pid)
        funnels = [pid for worker in workers for pid in children_of(worker)]
        assert len(workers) == 2 and len(funnels) == 2
        seen = {}
        for _ in range(60):  # a new connection each time: the kernel hands them to either worker
            health = httpx.get(server.url + "/health", headers={"connection": "close"}).json()
            seen[health["pid"]] = health
            if len(seen) == 2:
                break
        assert set(seen) == set(workers)
        for health in seen.values():
            assert health["funnel_pid"] in funnels and health["memory_mib"]["pss"] > 0
            assert health["funnel_memory_mib"]["pss"] > 0

        bodies = [request_bytes("127.0.0.1", "/recommend", {"user_id": u, "k": 5}) for u in known["users"][:50]]
        records = []
        load = threading.Thread(target=lambda: records.extend(run(open_loop(server.url, bodies, 100, 3))))
        load.start()
        time.sleep(1.0)
        stopped_at = time.monotonic()
        os.kill(server.process.pid, signal.SIGTERM)
        code = server.process.wait(30)
        drained_in = time.monotonic() - stopped_at
        load.join()
    assert code == 0 and drained_in < 15
    assert not [pid for pid in workers + funnels if os.path.exists(f"/proc/{pid}")]
    statuses = {r.status for r in records}
    assert statuses <= {200, 503, None}  # answered, refused while draining, or no server to connect to
    assert all(r.status == 200 for r in records if r.due < 0.9)  # everything before the SIGTERM
