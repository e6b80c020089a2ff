"""MovieLens ratings -> an interactions dataset (user_id, item_id, user and movie features, labels).

Variants: ml-100k (default; read from the local cache, fetched on first use, unless --source),
ml-1m, ml-latest, ml-latest-small and sets (GroupLens "Learning from Sets of Items"), each read
from its own original files in --source (see movielens_files.py for the layouts).

Labels: ``label`` (binary; by default rating >= 4, see --label) then ``rating`` (regression).
Examples::

    recfunnel prepare movielens --out data/ml-100k
    recfunnel prepare movielens --variant ml-1m --source ~/data/ml-1m --split temporal --out data/ml-1m
    recfunnel prepare movielens --label all --val-fraction 0 --test-fraction 0.2 --out data/ml-100k-tfrs
"""

from __future__ import annotations

import argparse
from pathlib import Path

from recfunnel.data.format.manifest import Manifest
from recfunnel.data.format.shards import check_output
from recfunnel.data.prepare.dataset import prepare_interaction_dataset
from recfunnel.data.prepare.history import HISTORY_LENGTH, add_history_argument
from recfunnel.data.prepare.labels import LabelSpec, add_label_arguments, label_kwargs
from recfunnel.data.prepare.splits import SplitSpec, add_split_arguments, split_kwargs
from recfunnel.data.sources.fetch import fetch_movielens
from recfunnel.data.sources.movielens_files import VARIANT_FILES, find_files, read_variant
from recfunnel.errors import DataError

__all__ = ["HELP", "VARIANTS", "add_arguments", "run", "prepare_movielens"]

HELP = "MovieLens ratings (ml-100k from the cache; ml-1m, ml-latest(-small), sets from --source)"
VARIANTS = tuple(VARIANT_FILES)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--variant", default="ml-100k", metavar="NAME", help=f"which release: {', '.join(VARIANTS)} (default ml-100k)"
    )
    parser.add_argument(
        "--source",
        default=None,
        metavar="PATH",
        help="folder holding the variant's original files (default for ml-100k: the local cache, "
        "downloaded on first use)",
    )
    add_label_arguments(parser)
    add_split_arguments(parser)
    add_history_argument(parser)


def run(args: argparse.Namespace) -> Manifest:
    return prepare_movielens(
        args.variant,
        args.out,
        source=args.source,
        **label_kwargs(args),
        **split_kwargs(args),
        history=args.history,
        block_rows=args.block_rows,
        compression=args.compression,
        overwrite=args.overwrite,
        quiet=args.quiet,
    )


def prepare_movielens(
    variant: str,
    out: str | Path,
    *,
    source: str | Path | None = None,
    label: str = "auto",
    threshold: float = 4.0,
    user_mean_on: str = "train",
    split: str = "auto",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    leave_last: int = 1,
    seed: int = 42,
    history: int = HISTORY_LENGTH,
    block_rows: int = 4096,
    compression: str | None = None,
    overwrite: bool = False,
    quiet: bool = False,
) -> Manifest:
    """Prepare MovieLens ``variant`` into the dataset folder ``out`` and return its manifest.

    label/threshold/user_mean_on: the binary label rule (see labels.py); split/val_fraction/
    test_fraction/leave_last/seed: the split (see splits.py); the rest as ``recfunnel prepare``.
    """
    if variant not in VARIANTS:
        raise DataError(f"--variant: unknown MovieLens variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    labels = LabelSpec(rule=label, threshold=threshold, user_mean_on=user_mean_on)
    spec = SplitSpec(
        kind=split, val_fraction=val_fraction, test_fraction=test_fraction, leave_last=leave_last, seed=seed
    )
    check_output(out, overwrite, block_rows)
    data = read_variant(variant, _files(variant, source, quiet))
    return prepare_interaction_dataset(
        data,
        out,
        labels=labels,
        split=spec,
        block_rows=block_rows,
        compression=compression,
        overwrite=overwrite,
        quiet=quiet,
        history=history,
    )


def _files(variant: str, source: str | Path | None, quiet: bool) -> list[Path]:
    if source is not None:
        return find_files(variant, Path(source).expanduser())
    if variant != "ml-100k":
        raise DataError(
            f"--variant {variant}: pass --source with the folder of its files (from "
            "https://grouplens.org/datasets/movielens/; only ml-100k can be fetched automatically)"
        )
    return find_files(variant, fetch_movielens(quiet=quiet))
