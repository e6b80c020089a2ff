"""`recfunnel fetch | prepare | inspect | validate`: the data's subcommands."""

from __future__ import annotations

import argparse
import importlib

__all__ = ["PREPARE_SOURCES", "add_data_parsers"]

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


def add_data_parsers(sub: argparse._SubParsersAction, argv: list[str] | None) -> None:
    """``fetch``, ``prepare <source>``, ``inspect``, ``validate``; with ``argv``, only the source that
    ``argv`` names is imported."""
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
