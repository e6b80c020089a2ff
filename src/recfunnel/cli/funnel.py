"""`recfunnel index | recommend | serve`: the funnel's subcommands."""

from __future__ import annotations

import argparse
import sys

from recfunnel.errors import RecfunnelError
from recfunnel.serve.batcher import MAX_BATCH, MAX_QUEUE_MS, MAX_WAIT_MS

__all__ = ["add_funnel_parsers"]


def _cmd_index(args: argparse.Namespace) -> int:
    from recfunnel.retrieval.item_index import build_and_save

    params = dict(_key_value(item, "--param") for item in args.param)
    if args.data and not args.quiet:
        print(
            "recfunnel index: --data is no longer needed (the run's model folder holds what the funnel needs "
            "of its training data); ignored",
            file=sys.stderr,
        )
    report = build_and_save(args.run, args.out, kind=args.kind, overwrite=args.overwrite, **params)
    if not args.quiet:
        recall = (
            f", recall@{report.recall_k} vs exact search {report.recall:.4f} on {report.recall_queries} queries"
            if report.recall is not None
            else ""
        )
        print(
            f"{args.out}: {report.kind} index of {report.count:,} items ({report.dim}-d, {report.metric}), built in "
            f"{report.build_seconds:.2f} s{recall}"
        )
    return 0


def _key_value(item: str, option: str) -> tuple[str, int]:
    key, sep, value = item.partition("=")
    try:
        return key.strip(), int(value)
    except ValueError:
        raise RecfunnelError(f"{option} {item!r}: expected NAME=INTEGER, e.g. nprobe=32") from None


def _cmd_recommend(args: argparse.Namespace) -> int:
    from recfunnel.funnel.pipeline import funnel_config

    config = funnel_config(args.config, args.set)
    if args.user:
        from recfunnel.funnel.batch import as_catalogue_ids
        from recfunnel.funnel.pipeline import Funnel
        from recfunnel.funnel.show import show_recommendations

        funnel = Funnel.load(args.run, index=args.index, ranker=args.ranker, config=config)
        print(show_recommendations(funnel, as_catalogue_ids(funnel, args.user), k=args.k))
        return 0
    if not args.out:
        raise RecfunnelError("recommend: give --out FILE.parquet (every user) or --user ID (print for people)")
    options = dict(
        k=args.k, index=args.index, ranker=args.ranker, users=args.users, config=config, overwrite=args.overwrite
    )
    if args.spark:
        from recfunnel.funnel.batch_spark import recommend_to_folder_with_spark

        summary = recommend_to_folder_with_spark(args.run, args.out, master=args.spark_master or "", **options)
    else:
        from recfunnel.funnel.batch import recommend_to_file

        summary = recommend_to_file(args.run, args.out, quiet=args.quiet, **options)
    if not args.quiet:
        print(summary)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from recfunnel.funnel.pipeline import funnel_config
    from recfunnel.serve.server import serve

    serve(
        args.run,
        index=args.index,
        ranker=args.ranker,
        host=args.host,
        port=args.port,
        config=funnel_config(args.config, args.set),
        workers=args.workers,
        reload_every=args.reload_every,
        batching=_batching(args),
    )
    return 0


def _batching(args: argparse.Namespace):  # -> Batching; serve's modules load torch: imported late
    from recfunnel.serve.app import Batching

    if args.max_batch < 1:
        raise RecfunnelError(f"--max-batch: expected an integer >= 1, got {args.max_batch}")
    for name in ("max_wait_ms", "max_queue_ms"):
        if not getattr(args, name) >= 0:
            raise RecfunnelError(f"--{name.replace('_', '-')}: expected a number >= 0, got {getattr(args, name)}")
    return Batching(args.max_batch, args.max_wait_ms, args.max_queue_ms)


def add_funnel_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "index",
        help="index a two-tower run's items for retrieval (exact, IVF or HNSW; faiss)",
        description="Build the item index of a two-tower run: item tower vectors under the training "
        "score's metric. Approximate kinds report their recall against exact search.",
    )
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="a two-tower run")
    p.add_argument("--out", required=True, metavar="INDEX_DIR")
    p.add_argument("--kind", choices=["exact", "ivf", "hnsw"], default="exact", help="default exact")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="index parameter: nlist, nprobe (ivf); m, ef_construction, ef_search (hnsw)",
    )
    p.add_argument("--data", help=argparse.SUPPRESS)  # no longer needed; accepted so old scripts still run
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_index)

    def funnel_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--run", required=True, metavar="RUN_DIR", help="a two-tower run (retrieval)")
        p.add_argument(
            "--ranker",
            metavar="RANKER_RUN_DIR",
            help="a dlrm / dcnv2 / deepfm run on the same dataset (ranks the retrieved candidates)",
        )
        p.add_argument(
            "--index", metavar="INDEX_DIR", help="from `recfunnel index` (default: an exact index built in memory)"
        )
        p.add_argument("--config", help="funnel YAML: candidates, exclude_seen, rules, rank, rerank, mmr_lambda, ...")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override one funnel field, e.g. --set candidates=300 (repeatable)",
        )

    p = sub.add_parser("recommend", help="top-k recommendations for every known user (or a list), as Parquet")
    funnel_options(p)
    p.add_argument("--k", type=int, default=100, help="items per user (default 100)")
    p.add_argument("--out", metavar="FILE.parquet", help="user_id, rank, item_id, score")
    p.add_argument(
        "--user",
        action="append",
        metavar="ID",
        help="print this user's recommendations with titles instead of writing --out (repeatable)",
    )
    p.add_argument(
        "--users",
        metavar="FILE",
        help="users to recommend for: a CSV/Parquet file with a user_id "
        "column, or a text file with one id per line (default: every user of the run)",
    )
    p.add_argument("--spark", action="store_true", help="spread the users over Spark tasks (large user sets)")
    p.add_argument(
        "--spark-master", metavar="URL", help="with --spark: the master (default: the active session, else local[*])"
    )
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_recommend)

    p = sub.add_parser("serve", help="serve recommendations over HTTP (FastAPI on uvicorn)")
    funnel_options(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes answering on the port, sharing the loaded models (default 1; about one per core)",
    )
    p.add_argument(
        "--reload-every",
        type=float,
        metavar="SECONDS",
        help="check for new model versions this often (e.g. of models:/NAME@champion) and swap them in "
        "without a restart; POST /admin/reload (from this machine) checks at once",
    )
    p.add_argument(
        "--max-batch", type=int, default=MAX_BATCH, help=f"requests through the models at once (default {MAX_BATCH})"
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=MAX_WAIT_MS,
        help=f"wait this long for a batch to fill after a quiet spell (default {MAX_WAIT_MS:g}: go at once; "
        "under load, batches fill while the one before runs)",
    )
    p.add_argument(
        "--max-queue-ms",
        type=float,
        default=MAX_QUEUE_MS,
        help=f"refuse (503, Retry-After) requests that would queue longer than this (default {MAX_QUEUE_MS:g})",
    )
    p.set_defaults(func=_cmd_serve)
