"""`recfunnel bench serve` on the session's tiny funnel: a short load at fixed rates against this
tree's server and HEAD's (extracted by git), an overload phase, and the tables."""

import pytest

pytestmark = pytest.mark.slow


def test_the_serving_benchmark_measures_two_servers_side_by_side(runs, capsys):
    from recfunnel.bench.serve import bench_serve
    from recfunnel.bench.serve_report import print_serve

    result = bench_serve(
        runs / "two-tower",
        ranker=runs / "dlrm",
        index=runs / "index",
        rates=[40, 80],
        seconds=1.0,
        warmup=0.2,
        candidates=50,
        against="HEAD",
        overload=[2.0],
    )
    before, now = result["servers"]
    assert before["baseline"] and before["server"] == "HEAD (before)" and not before["overload"]
    assert result["machine"]["matmul_gflops"] > 0 and result["machine"]["cores"] >= 1
    for server in (before, now):
        assert [r["rate"] for r in server["sweep"]] == [40, 80]
        for r in server["sweep"]:
            assert r["errors"] == 0 and r["scheduled"] == round(r["rate"])
            assert 0 < r["p50_ms"] <= r["p99_ms"]
        assert server["sustained"] in (0, 40, 80) and server["memory_mib"][0]["pss"] > 0
        assert {"retrieve", "filter", "rank", "rerank"} <= set(server["stages"]["lowest rate"])
    if now["sustained"]:
        [phase] = now["overload"]
        assert phase["factor"] == 2.0 and phase["errors"] == 0 and 0 <= phase["refused_share"] <= 1
    assert now["vs_baseline"] == (round(now["sustained"] / before["sustained"], 2) if before["sustained"] else None)
    print_serve(result)
    out = capsys.readouterr().out
    assert "sustained req/s" in out and "HEAD (before)" in out and "GFLOP/s" in out


def test_against_a_revision_that_does_not_exist_is_a_one_line_error(runs):
    from recfunnel.bench.serve import bench_serve
    from recfunnel.errors import RecfunnelError

    with pytest.raises(RecfunnelError, match="--against no-such-rev: not a revision"):
        bench_serve(runs / "two-tower", rates=[10], seconds=0.1, against="no-such-rev")
