"""``recfunnel prepare synthetic``: Criteo-shaped rows whose labels come from a known model.

Each row has ``--dense`` log1p-count features (``int_*``), ``--sparse`` single-hot ids (``cat_*``) and
``--multi-hot`` lists of 1..``--max-len`` ids (``multi_*``). Ids follow a Zipf law (id 1 is the most
frequent; ids are 1..cardinality-1, index 0 stays the unused OOV bucket). The label is drawn as::

    logit = bias + sum_d w_d * x_d                        dense (log1p of counts)
                 + sum_f effect_f[id_f]                   single-hot main effects
                 + sum_m mean(effect_m[ids_m])            multi-hot main effects (mean pooling)
                 + sum_(f,g) <u_f[id_f], u_g[id_g]>       a few latent pairwise interactions
    label ~ Bernoulli(sigmoid(logit))

The interactions are what a factorisation model (DLRM, DCNv2, DeepFM) can learn and logistic
regression cannot. Effects of rare ids shrink with their frequency, so most of the signal sits on
ids a model sees often enough to learn; ``bias`` is solved for ``--positive-rate``.

Because the true probability of every row is known, the manifest records the Bayes-optimal AUC and
log loss of the val and test splits (``extra.bayes_auc``, ``extra.bayes_logloss``): the score of a
perfect model on exactly those rows. The model itself is in :mod:`.synthetic_model`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from recfunnel.data.format.manifest import DenseFeature, Label, Manifest, SparseFeature
from recfunnel.data.format.shards import check_output
from recfunnel.data.prepare.history import HISTORY_LENGTH, add_history_argument
from recfunnel.data.sources.ctr_common import (
    SPLIT_NAMES,
    TEST,
    VAL,
    SplitWriters,
    auc,
    check_fractions,
    logloss,
    position_uniform,
    progress,
    random_codes,
    split_names,
)
from recfunnel.data.sources.synthetic_interactions import prepare_synthetic_interactions
from recfunnel.data.sources.synthetic_model import CHUNK_ROWS, GeneratorConfig, GroundTruth, parse_cardinality
from recfunnel.errors import ConfigError
from recfunnel.files import atomic_output_dir

__all__ = ["HELP", "add_arguments", "run", "prepare_synthetic"]

HELP = "Criteo-shaped data from a known model, with its Bayes-optimal AUC in the manifest"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = GeneratorConfig()
    parser.add_argument("--rows", type=int, required=True, help="rows to generate, all splits together")
    parser.add_argument(
        "--kind",
        choices=["ctr", "interactions"],
        default="ctr",
        help="ctr: Criteo-shaped rows | interactions: synthetic user-item data (default ctr)",
    )
    parser.add_argument("--dense", type=int, default=d.dense, help=f"dense features (default {d.dense})")
    parser.add_argument("--sparse", type=int, default=d.sparse, help=f"single-hot features (default {d.sparse})")
    parser.add_argument(
        "--multi-hot", type=int, default=d.multi_hot, help=f"multi-hot features (default {d.multi_hot})"
    )
    parser.add_argument(
        "--max-len", type=int, default=d.max_len, help=f"a multi-hot list has 1..N ids, uniformly (default {d.max_len})"
    )
    parser.add_argument(
        "--cardinality",
        default=None,
        help="indices per sparse feature, OOV 0 included: one number for all, or one per feature "
        "(single-hot, then multi-hot), comma-separated (default: single-hot geometric from 3 "
        "to 2000, multi-hot 200 and 2000: learnable from a few 100k rows)",
    )
    parser.add_argument(
        "--zipf-alpha",
        type=float,
        default=d.zipf_alpha,
        help=f"id k is drawn with probability ~ k^-alpha; 0 = uniform (default {d.zipf_alpha})",
    )
    parser.add_argument(
        "--positive-rate",
        type=float,
        default=d.positive_rate,
        help=f"mean click probability the bias is solved for (default {d.positive_rate})",
    )
    parser.add_argument(
        "--interactions",
        type=int,
        default=d.interactions,
        help=f"latent pairwise interactions between the smallest tables (default {d.interactions})",
    )
    parser.add_argument(
        "--latent-dim", type=int, default=d.latent_dim, help=f"size of the interaction vectors (default {d.latent_dim})"
    )
    parser.add_argument(
        "--markov",
        type=float,
        default=0.0,
        metavar="P",
        help="interactions: a user's next item is the planted successor of their last one with "
        "probability P (a known answer for models with history; default 0)",
    )
    add_history_argument(parser)
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of rows in val, 0 = none (default 0.1)")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="share of rows in test (default 0.1)")


def run(args: argparse.Namespace) -> Manifest:
    return prepare_synthetic(
        args.rows,
        args.out,
        kind=args.kind,
        dense=args.dense,
        sparse=args.sparse,
        multi_hot=args.multi_hot,
        max_len=args.max_len,
        cardinality=parse_cardinality(args.cardinality),
        zipf_alpha=args.zipf_alpha,
        positive_rate=args.positive_rate,
        interactions=args.interactions,
        latent_dim=args.latent_dim,
        markov=args.markov,
        history=args.history,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        block_rows=args.block_rows,
        compression=args.compression,
        overwrite=args.overwrite,
        quiet=args.quiet,
    )


def prepare_synthetic(
    rows: int,
    out: str | Path,
    *,
    kind: str = "ctr",
    dense: int = 13,
    sparse: int = 26,
    multi_hot: int = 2,
    max_len: int = 5,
    cardinality: tuple[int, ...] = (),
    zipf_alpha: float = 1.5,
    positive_rate: float = 0.35,
    interactions: int = 4,
    latent_dim: int = 2,
    markov: float = 0.0,
    history: int = HISTORY_LENGTH,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 42,
    block_rows: int = 4096,
    compression: str | None = None,
    overwrite: bool = False,
    quiet: bool = False,
) -> Manifest:
    """Generate ``rows`` rows into the dataset folder ``out`` and return its manifest.

    ``kind="interactions"`` hands over to ``prepare_synthetic_interactions`` (user-item data); the
    CTR options then do not apply. Rows are split at random (by a seeded hash of the row position).
    """
    if kind == "interactions":
        # Imported here: that module is optional for CTR data and is written separately.
        return prepare_synthetic_interactions(
            rows,
            out,
            markov=markov,
            history=history,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
            block_rows=block_rows,
            compression=compression,
            overwrite=overwrite,
            quiet=quiet,
        )
    if kind != "ctr":
        raise ConfigError(f"--kind: {kind!r}, expected ctr or interactions")
    if rows < 1:
        raise ConfigError(f"--rows: {rows}, expected >= 1")
    check_fractions(val_fraction, test_fraction)
    config = GeneratorConfig(
        dense=dense,
        sparse=sparse,
        multi_hot=multi_hot,
        max_len=max_len,
        cardinality=tuple(cardinality),
        zipf_alpha=zipf_alpha,
        positive_rate=positive_rate,
        interactions=interactions,
        latent_dim=latent_dim,
        seed=seed,
    )
    check_output(out, overwrite, block_rows)
    truth = GroundTruth(config)
    names = split_names(val_fraction)
    with atomic_output_dir(out, overwrite) as tmp:
        # Rows are i.i.d., so writing them in generation order needs no shuffle buffer.
        writers = SplitWriters(tmp, names, block_rows=block_rows, seed=seed, compression=compression, shuffled=())
        held, longest = _generate(truth, rows, writers, val_fraction, test_fraction, quiet)
        splits = writers.finish(rows)
        manifest = _manifest(truth, splits, held, longest, rows, val_fraction, test_fraction, block_rows)
        manifest.save(tmp)
    return manifest


def _generate(
    truth: GroundTruth, rows: int, writers: SplitWriters, val_fraction: float, test_fraction: float, quiet: bool
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """Write all rows chunk by chunk. Returns (labels, true probabilities) of val and test, and the
    longest list seen per multi-hot feature."""
    seed = truth.config.seed
    held: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {VAL: [], TEST: []}
    longest = np.zeros(truth.config.multi_hot, np.int64)
    with progress(rows, "synthetic: generating", quiet, unit="rows") as bar:
        for chunk, start in enumerate(range(0, rows, CHUNK_ROWS)):
            n = min(CHUNK_ROWS, rows - start)
            batch, p = truth.sample(chunk, n)
            codes = random_codes(position_uniform(seed, start, n), val_fraction, test_fraction)
            writers.write_codes(codes, batch)
            for code in held:
                mask = codes == code
                held[code].append((batch.labels[mask, 0].astype(np.uint8), p[mask]))
            longest = np.maximum(longest, batch.mh_lengths.max(axis=0, initial=0))
            bar.update(n)
    out = {}
    for code, parts in held.items():
        if parts and SPLIT_NAMES[code] in writers.names:
            out[SPLIT_NAMES[code]] = (np.concatenate([y for y, _ in parts]), np.concatenate([q for _, q in parts]))
    return out, longest


def _manifest(
    truth: GroundTruth,
    splits: dict,
    held: dict[str, tuple[np.ndarray, np.ndarray]],
    longest: np.ndarray,
    rows: int,
    val_fraction: float,
    test_fraction: float,
    block_rows: int,
) -> Manifest:
    cfg = truth.config
    s = cfg.sparse
    sparse = [SparseFeature(f"cat_{f}", truth.cards[f], encoding="index") for f in range(s)]
    sparse += [
        SparseFeature(f"multi_{j}", truth.cards[s + j], multi_hot=True, encoding="index", max_len=int(longest[j]))
        for j in range(cfg.multi_hot)
    ]
    bayes_auc = {name: round(auc(y, p), 6) for name, (y, p) in held.items()}
    bayes_logloss = {name: round(logloss(y, p), 6) for name, (y, p) in held.items()}
    return Manifest(
        kind="ctr",
        dense=[DenseFeature(f"int_{d}", "log1p") for d in range(cfg.dense)],
        sparse=sparse,
        labels=[Label("label", "binary", "Bernoulli(sigmoid(ground-truth logit)); see extra.generator")],
        splits=splits,
        split={
            "kind": "random",
            "seed": cfg.seed,
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "rows": {name: info.rows for name, info in splits.items()},
        },
        block_rows=block_rows,
        source={"kind": "synthetic", "rows": rows},
        extra={"bayes_auc": bayes_auc, "bayes_logloss": bayes_logloss, "generator": truth.describe()},
    )
