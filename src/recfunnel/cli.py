"""The ``recfunnel`` console script. Each subcommand is a plain function in the package; this file
only parses arguments, calls it, and turns a user mistake into one line on stderr and exit code 2.

Each ``_cmd_*`` imports its subcommand's module when it runs: torch, TorchRec, MLflow and Spark
take seconds to import, and ``recfunnel --help`` or ``recfunnel prepare`` should not wait for them.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from recfunnel.bench.cli import add_bench_parsers, show_result
from recfunnel.compat.tqdm import close_progress_bars
from recfunnel.config import MODELS
from recfunnel.errors import RecfunnelError, Terminated

__all__ = ["main", "build_parser"]

# Sources of `recfunnel prepare`: name -> (module with add_arguments(parser) and run(args) -> Manifest,
# one-line help). A module is imported only when its source is used or every parser is built.
PREPARE_SOURCES = {
    "movielens": (
        "recfunnel.data.sources.movielens",
        "MovieLens ratings: ml-100k (cached), ml-1m, ml-latest(-small), sets",
    ),
    "interactions": (
        "recfunnel.data.sources.interactions",
        "your own user-item interactions from a CSV or Parquet file",
    ),
    "criteo": ("recfunnel.data.sources.criteo", "Criteo click logs (TSV: label, 13 integer, 26 categorical), streamed"),
    "synthetic": ("recfunnel.data.sources.synthetic", "Criteo-shaped or user-item data from a known model"),
    "spark": (
        "recfunnel.data.sources.spark_table",
        "interactions from a Spark table or path, written by Spark workers",
    ),
}


def _add_output_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="dataset folder to write (written to a temp folder, then renamed)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--seed", type=int, default=42, help="seed of the split and of write-time shuffling (default 42)")
    p.add_argument("--block-rows", type=int, default=4096, help="rows per MDS sample (default 4096)")
    p.add_argument("--compression", default=None, help="MDS shard compression, e.g. zstd (default none)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")


def _cmd_prepare(args: argparse.Namespace) -> int:
    from recfunnel.data.inspect import print_dataset_summary

    manifest = args.source_module.run(args)
    if not args.quiet:
        print_dataset_summary(args.out, manifest)
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    from recfunnel.data.sources.fetch import fetch_movielens

    path = fetch_movielens(quiet=args.quiet)
    if not args.quiet:
        print(path)
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from recfunnel.data.inspect import inspect_dataset

    inspect_dataset(args.dir, batch_size=args.batch_size, as_json=args.json)
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from recfunnel.data.inspect import validate_dataset

    validate_dataset(args.dir, hashes=not args.fast)
    print(f"{args.dir}: ok")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from recfunnel.train.run import train

    train_args = dict(
        model_kind=args.model,
        data=args.data,
        out=args.out,
        config_file=args.config,
        overrides=args.set,
        overwrite=args.overwrite,
        quiet=args.quiet,
        resume=args.resume,
    )
    if args.launcher != "none":
        from recfunnel.config import load_config
        from recfunnel.train.run import check_compatible, resume_config

        processes = args.nproc if args.launcher == "torchrun" else args.num_processes
        option = "--nproc" if args.launcher == "torchrun" else "--num-processes"
        if processes < 1:
            raise RecfunnelError(f"{option}: expected an integer >= 1, got {processes}")
        # a user mistake fails here once, not once per process
        config = (
            resume_config(args.model, args.out, args.config, args.set)[0]
            if args.resume
            else load_config(args.model, args.config, args.set)
        )
        check_compatible(config, args.data)
        if args.launcher == "torchrun":
            from recfunnel.train.launch import run_torchrun

            return run_torchrun(args.argv, processes)
        from recfunnel.train.spark_launch import run_spark

        return run_spark(train_args, processes, master=args.spark_master, local_mode=args.local_mode)
    train(**train_args)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    if args.ranker or args.index or args.funnel:
        from recfunnel.funnel.evaluate import evaluate_funnel, print_funnel_evaluation
        from recfunnel.funnel.pipeline import funnel_config

        config = funnel_config(args.config, args.set)
        result = evaluate_funnel(
            args.run,
            ranker=args.ranker,
            index=args.index,
            split=args.split,
            data=args.data,
            ks=args.k or [10, 20],
            config=config,
        )
        if args.mlflow:
            from recfunnel.funnel.evaluate import log_funnel_evaluation

            result["mlflow_run_id"] = log_funnel_evaluation(result, args.run, args.ranker, args.index, config)
        return show_result(result, args.json, print_funnel_evaluation)
    from recfunnel.train.evaluate import evaluate_run

    evaluate_run(args.run, as_json=args.json, data=args.data)
    return 0


def _cmd_export_embeddings(args: argparse.Namespace) -> int:
    from recfunnel.retrieval.embeddings import export_embeddings

    counts = export_embeddings(args.run, args.out, overwrite=args.overwrite)
    if not args.quiet:
        print(
            f"{args.out}: users.parquet ({counts['users']:,} users), items.parquet ({counts['items']:,} items), "
            f"{counts['dim']}-d float32 embeddings"
        )
    return 0


def _add_train_parsers(sub: argparse._SubParsersAction) -> None:
    # allow_abbrev=False: launchers drop their own options by exact name before each process re-runs the command
    p = sub.add_parser(
        "train",
        allow_abbrev=False,
        help="train a two-tower retriever or a DLRM / DCNv2 / DeepFM ranker",
        description="Train on a prepared dataset; writes RUN_DIR (model, metrics.json, plots, "
        "checkpoints) and an MLflow run (MLFLOW_TRACKING_URI, default sqlite:///mlflow.db).",
    )
    p.add_argument("--model", required=True, choices=MODELS)
    p.add_argument("--data", required=True, help="dataset folder written by `recfunnel prepare`")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder to write")
    p.add_argument("--config", help="YAML file applied on top of the model's defaults (configs/<model>.yaml)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one field, e.g. --set train.batch_size=4096 (repeatable)",
    )
    p.add_argument("--overwrite", action="store_true", help="reuse a RUN_DIR that holds a finished run")
    p.add_argument("--quiet", action="store_true", help="no progress bars or summary")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in RUN_DIR from its latest checkpoint (on any number of "
        "processes); --set may change values such as train.epochs",
    )
    p.add_argument(
        "--launcher",
        choices=["none", "torchrun", "spark"],
        default="none",
        help="torchrun: --nproc processes of this machine; spark: --num-processes Spark tasks through "
        "TorchDistributor (gloo on CPU, nccl on GPUs). The command also runs as is under your own "
        "torchrun",
    )
    p.add_argument("--nproc", type=int, default=2, help="processes for --launcher torchrun (default 2)")
    p.add_argument("--num-processes", type=int, default=2, help="processes for --launcher spark (default 2)")
    p.add_argument(
        "--spark-master",
        metavar="URL",
        help="Spark master for --launcher spark (default: the active session, as on Databricks, else local[N])",
    )
    p.add_argument(
        "--local-mode",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="spark: run the processes on the driver (--local-mode) or as Spark tasks on the "
        "executors (--no-local-mode, the default)",
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="a run's validation and test metrics beside its baselines")
    p.add_argument("--run", required=True, metavar="RUN_DIR")
    p.add_argument(
        "--data",
        help="evaluate the run's saved model afresh on this dataset (same features) "
        "instead of printing the metrics recorded at the end of training",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    funnel = p.add_argument_group(
        "the funnel (two-tower --run): retrieval alone vs with ranking and re-ranking, beside most-popular"
    )
    funnel.add_argument("--funnel", action="store_true", help="evaluate the funnel (implied by --ranker / --index)")
    funnel.add_argument("--ranker", metavar="RANKER_RUN_DIR", help="a dlrm / dcnv2 / deepfm run on the same dataset")
    funnel.add_argument("--index", metavar="INDEX_DIR", help="from `recfunnel index` (default: exact, in memory)")
    funnel.add_argument("--split", default="test", help="split to evaluate on (default test)")
    funnel.add_argument("--k", type=int, action="append", help="cut-off (repeatable; default 10 and 20)")
    funnel.add_argument("--config", help="funnel YAML (candidates, rules, rerank, ...)")
    funnel.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one funnel field")
    funnel.add_argument("--mlflow", action="store_true", help="also log the evaluation as an MLflow run named funnel")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("export-embeddings", help="user and item embeddings of a two-tower run, as Parquet")
    p.add_argument("--run", required=True, metavar="RUN_DIR")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for users.parquet and items.parquet")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_export_embeddings)


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
    )
    return 0


def _add_funnel_parsers(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(func=_cmd_serve)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``argv``, only the source that ``argv`` names is imported."""
    parser = argparse.ArgumentParser(
        prog="recfunnel",
        description="Deep-learning recommenders as a funnel: prepare data, train, index, recommend, serve.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("fetch", help="download MovieLens 100k into the local cache")
    p.add_argument("dataset", choices=["movielens"])
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_fetch)

    p = sub.add_parser("prepare", help="turn raw data into a validated, sharded dataset")
    sources = p.add_subparsers(dest="source", required=True, metavar="SOURCE")
    for name, (module_name, help_text) in PREPARE_SOURCES.items():
        if argv is not None and argv[:2] != ["prepare", name]:
            sources.add_parser(name, help=help_text)  # not chosen: no need to import its module
            continue
        module = importlib.import_module(module_name)
        sp = sources.add_parser(
            name, help=help_text, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(sp)
        _add_output_arguments(sp)
        sp.set_defaults(func=_cmd_prepare, source_module=module)

    p = sub.add_parser("inspect", help="summarise a prepared dataset and what the loader delivers")
    p.add_argument("dir")
    p.add_argument("--batch-size", type=int, default=4, help="rows of the sample batch to print")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("validate", help="check a dataset's shards against its manifest")
    p.add_argument("dir")
    p.add_argument("--fast", action="store_true", help="check sizes only, skip content hashes")
    p.set_defaults(func=_cmd_validate)

    _add_train_parsers(sub)
    _add_funnel_parsers(sub)

    add_bench_parsers(sub)
    return parser


def run(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the subcommand; user mistakes raise :class:`RecfunnelError`."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    args.argv = list(argv)  # for launchers that re-run the command
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


# TorchRec and fbgemm are installed by hand, not by pip's resolver (see pyproject.toml)
TORCH_TRIO = ("torchrec", "fbgemm_gpu")
INSTALL_TRIO = (
    "install the torch trio first: pip install torch==2.13.0 fbgemm-gpu-cpu==1.8.0 tensordict==0.15.3 "
    "torchmetrics==1.0.3 pyre-extensions, then pip install --no-deps torchrec==1.8.0 (on GPUs: fbgemm-gpu==1.8.0 "
    "instead of fbgemm-gpu-cpu)"
)


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    """Run the command; exit codes: 0 done, 2 a user mistake (one line on stderr), 3 corrupt data
    (one line naming the shard and block), 130 interrupted (SIGINT), 143 terminated (SIGTERM)."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        return run(argv)
    except RecfunnelError as err:
        close_progress_bars()
        print(f"recfunnel: error: {err}", file=sys.stderr)
        return err.exit_code
    except ModuleNotFoundError as err:
        if err.name not in TORCH_TRIO:
            raise
        print(f"recfunnel: error: {err.name} is not installed; {INSTALL_TRIO}", file=sys.stderr)
        return 2
    except OSError as err:  # a file or folder the system will not let us read or write
        if "fbgemm_gpu" in str(err):  # the CUDA build of fbgemm-gpu on a machine without CUDA
            print(
                f"recfunnel: error: fbgemm-gpu cannot load here ({str(err).splitlines()[0][:120]}); {INSTALL_TRIO}",
                file=sys.stderr,
            )
            return 2
        close_progress_bars()
        where = f"{err.filename}: " if err.filename else ""
        print(f"recfunnel: error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except Terminated:
        close_progress_bars()
        print("recfunnel: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        close_progress_bars()
        print("recfunnel: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
