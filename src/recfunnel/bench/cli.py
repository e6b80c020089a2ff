"""`recfunnel bench ...`: the benchmark subcommands (each module under bench/ measures one thing).

Each ``_cmd_bench_*`` imports its benchmark when it runs, so that building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

__all__ = ["add_bench_parsers", "show_result"]


def show_result(result: dict, as_json: bool, printer: Callable[[dict], None]) -> int:
    """A benchmark's result as one JSON object or as its table."""
    if as_json:
        print(json.dumps(result))
    else:
        printer(result)
    return 0


def _cmd_bench_data(args: argparse.Namespace) -> int:
    from recfunnel.bench.data import bench_data, print_bench

    result = bench_data(
        args.dir, batch_size=args.batch_size, workers=args.workers, seconds=args.seconds, repeats=args.repeats
    )
    return show_result(result, args.json, print_bench)


def _cmd_bench_train(args: argparse.Namespace) -> int:
    from recfunnel.bench.train import bench_train, print_bench

    result = bench_train(
        batch_size=args.batch_size,
        steps=args.steps,
        repeats=args.repeats,
        threads=args.threads,
        rows_per_table=args.rows_per_table,
        zipf=args.zipf,
    )
    return show_result(result, args.json, print_bench)


def _cmd_bench_scale(args: argparse.Namespace) -> int:
    from recfunnel.bench.scale import bench_scale, print_scale

    result = bench_scale(
        args.dir,
        model=args.model,
        processes=tuple(args.processes),
        launchers=tuple(args.launcher or ["torchrun", "spark"]),
        global_batch=args.global_batch,
        repeats=args.repeats,
    )
    return show_result(result, args.json, print_scale)


def _cmd_bench_index(args: argparse.Namespace) -> int:
    from recfunnel.bench.index import bench_index, print_index

    rows = bench_index(
        n=args.n,
        dim=args.dim,
        queries=args.queries,
        k=args.k,
        kinds=tuple(args.kind or ["exact", "ivf", "hnsw"]),
        repeats=args.repeats,
    )
    return show_result({"rows": rows}, args.json, print_index)


def _cmd_bench_serve(args: argparse.Namespace) -> int:
    from recfunnel.bench.serve import bench_serve
    from recfunnel.bench.serve_report import print_serve

    result = bench_serve(
        args.run,
        ranker=args.ranker,
        index=args.index,
        rates=args.rate,
        seconds=args.seconds,
        k=args.k,
        candidates=args.candidates,
        concurrency=args.concurrency,
        workers=args.workers or [1],
        against=args.against,
        overload=[] if args.no_overload else [2.0, 4.0],
    )
    return show_result(result, args.json, print_serve)


def _cmd_bench_quality(args: argparse.Namespace) -> int:
    from recfunnel.bench.quality import bench_quality, print_quality

    return show_result(bench_quality(args.work, args.protocol or None), args.json, print_quality)


def add_bench_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks")
    bench = p.add_subparsers(dest="bench", required=True, metavar="WHAT")
    bp = bench.add_parser("data", help="loader rows/s vs a Parquet reader vs per-row MDS samples")
    bp.add_argument("dir", help="a prepared dataset (e.g. from `recfunnel prepare synthetic`)")
    bp.add_argument("--batch-size", type=int, default=8192)
    bp.add_argument("--workers", type=int, default=0, help="DataLoader workers of the loader (default 0)")
    bp.add_argument("--seconds", type=float, default=3.0, help="time per measurement (default 3)")
    bp.add_argument("--repeats", type=int, default=3, help="measurements per reader; the median is reported")
    bp.add_argument("--json", action="store_true", help="print one JSON object")
    bp.set_defaults(func=_cmd_bench_data)
    bp = bench.add_parser(
        "train",
        help="DLRM training samples/s (Criteo Kaggle shape): TorchRec vs plain PyTorch vs the machine's roofline",
    )
    bp.add_argument("--batch-size", type=int, default=2048)
    bp.add_argument("--steps", type=int, default=20, help="timed steps per measurement (default 20)")
    bp.add_argument("--repeats", type=int, default=3, help="measurements per variant; the median is reported")
    bp.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    bp.add_argument("--rows-per-table", type=int, default=100_000, help="embedding rows per table (default 100k)")
    bp.add_argument(
        "--zipf",
        type=float,
        default=1.05,
        help="skew of the ids: id k drawn with probability "
        "~ k^-zipf, as in real click logs; 0 = uniform (default 1.05)",
    )
    bp.add_argument("--json", action="store_true", help="print one JSON object")
    bp.set_defaults(func=_cmd_bench_train)
    bp = bench.add_parser(
        "quality",
        help="model quality on MovieLens 100k and synthetic CTR data beside "
        "baselines, and what each funnel stage adds on splits in time (prepares data and trains, minutes)",
    )
    bp.add_argument("--work", default=".demo/bench-quality", help="folder for datasets and runs")
    bp.add_argument(
        "--protocol",
        action="append",
        choices=["tfrs", "temporal", "ctr", "funnel-temporal", "funnel-temporal-ids", "funnel-time", "funnel-time-ids"],
        help="run only this protocol (repeatable; default all)",
    )
    bp.add_argument("--json", action="store_true", help="print one JSON object")
    bp.set_defaults(func=_cmd_bench_quality)
    bp = bench.add_parser(
        "index",
        help="vector index build time, queries/s and recall vs exact search on "
        "synthetic clustered vectors (exact, IVF, HNSW)",
    )
    bp.add_argument("--n", type=int, default=1_000_000, help="vectors indexed (default 1,000,000)")
    bp.add_argument("--dim", type=int, default=64)
    bp.add_argument("--queries", type=int, default=1000)
    bp.add_argument("--k", type=int, default=100)
    bp.add_argument("--kind", action="append", choices=["exact", "ivf", "hnsw"], help="repeatable; default all")
    bp.add_argument("--repeats", type=int, default=3, help="timed passes over the queries; the median is reported")
    bp.add_argument("--json", action="store_true", help="print one JSON object")
    bp.set_defaults(func=_cmd_bench_index)
    bp = bench.add_parser(
        "serve",
        help="the request rate POST /recommend sustains at p99 <= 50 ms, 503s and recovery past saturation, "
        "stage times, memory per worker; optionally beside another commit's server (real `recfunnel serve` "
        "processes, open-loop load, minutes)",
    )
    bp.add_argument("--run", required=True, metavar="RUN_DIR", help="a two-tower run")
    bp.add_argument("--ranker", metavar="RANKER_RUN_DIR")
    bp.add_argument("--index", metavar="INDEX_DIR")
    bp.add_argument(
        "--rate",
        type=float,
        action="append",
        help="measure exactly these req/s (repeatable; default: a sweep up to the first rate not sustained)",
    )
    bp.add_argument("--seconds", type=float, default=5.0, help="measured seconds per rate (default 5)")
    bp.add_argument("--k", type=int, default=10)
    bp.add_argument("--candidates", type=int, default=100, help="retrieved per request (default 100)")
    bp.add_argument("--concurrency", type=int, default=256, help="most requests in flight (default 256)")
    bp.add_argument(
        "--workers",
        type=int,
        action="append",
        help="serve with this many workers (repeatable: one server each; default 1)",
    )
    bp.add_argument(
        "--against",
        metavar="REV",
        help="also measure this git revision's server first, as the baseline "
        "(e.g. HEAD~3; its src/ runs on the installed libraries)",
    )
    bp.add_argument("--no-overload", action="store_true", help="skip the 2x and 4x overload phases")
    bp.add_argument("--json", action="store_true", help="print one JSON object")
    bp.set_defaults(func=_cmd_bench_serve)
    bp = bench.add_parser(
        "scale",
        help="training samples/s on 1 and N processes at the same global batch "
        "(torchrun and Spark TorchDistributor; whole `recfunnel train` runs, minutes)",
    )
    bp.add_argument("dir", help="a prepared dataset (e.g. from `recfunnel prepare synthetic`)")
    bp.add_argument("--model", default="dlrm", help="model to train (default dlrm)")
    bp.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts (default 1 2)")
    bp.add_argument(
        "--launcher",
        action="append",
        choices=["torchrun", "spark"],
        help="launcher of the multi-process runs (repeatable; default both)",
    )
    bp.add_argument("--global-batch", type=int, default=4096, help="rows per step, all processes (default 4096)")
    bp.add_argument("--repeats", type=int, default=3, help="runs per variant; the median is reported")
    bp.add_argument("--json", action="store_true", help="print one JSON object")
    bp.set_defaults(func=_cmd_bench_scale)
