"""`recfunnel train | evaluate | export-embeddings`: the training subcommands."""

from __future__ import annotations

import argparse

from recfunnel.bench.cli import show_result
from recfunnel.config import MODELS
from recfunnel.errors import RecfunnelError

__all__ = ["add_train_parsers"]


def _cmd_train(args: argparse.Namespace) -> int:
    from recfunnel.train.run import train

    if args.retriever:
        if args.model == "two-tower":
            raise RecfunnelError("--retriever: for rankers (dlrm, dcnv2, deepfm); a two-tower run is the retriever")
        args.set = [*args.set, f"ranking.retriever={args.retriever}"]
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
        if config.two_stage:  # built once here, before the processes start (they reuse it)
            from pathlib import Path

            from recfunnel.train.candidates import describe, ensure_candidates

            candidates = ensure_candidates(config, args.data, Path(args.out), args.quiet)
            if not args.quiet:
                print(describe(candidates), flush=True)
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


def add_train_parsers(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument(
        "--retriever",
        metavar="TWO_TOWER_RUN",
        help="rankers: train on this retriever's top candidates for each user's validation "
        "interactions (lists in RUN_DIR/candidates/), as the funnel will ask it to rank them; "
        "ranking.loss: listwise (default) or bce",
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
