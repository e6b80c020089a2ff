"""The shared pipeline of user-item interaction datasets: check -> split -> label -> encode -> write.

Sources (MovieLens, a user's CSV/Parquet file, synthetic tastes) read their files into an
:class:`InteractionData`: an interactions table with standard columns ``user_id``, ``item_id`` and
optionally ``rating``, ``label``, ``timestamp`` and row-level ("context") feature columns, plus
optional per-user and per-item tables. :func:`prepare_interaction_dataset` turns it into a dataset
folder (see ``recfunnel.data.format``), written to a temp folder that becomes ``out`` only once complete::

    manifest.json          kind "interactions"; roles name the user/item id features
    vocab/<name>.parquet   user_id, item_id and every categorical feature (index 0 = OOV)
    users.parquet          user_index, user_id, user features encoded
    items.parquet          item_index, item_id, title (if known), item features encoded
    pairs/<split>.parquet  user_index, item_index, label[, rating][, timestamp], by user then time
    <split>/               MDS block shards; rows in a seeded random order

Encoding: single-hot indices int64, multi-hot lists of int64, dense float32 standardised with the
mean/std of train entities (user/item features) or train rows (context features); a missing dense
value becomes the mean (0 after standardising).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from recfunnel.data.format.manifest import Manifest
from recfunnel.data.format.shards import check_output
from recfunnel.data.prepare.check import check_interactions
from recfunnel.data.prepare.encode import Encoded, encode_features
from recfunnel.data.prepare.example_age import EXAMPLE_AGE, build_example_age
from recfunnel.data.prepare.history import HISTORY, HISTORY_LENGTH, build_history
from recfunnel.data.prepare.labels import LabelSpec, check_label_rule, derive_labels
from recfunnel.data.prepare.splits import SplitSpec, assign_splits
from recfunnel.data.prepare.tables import OWNERS, Feature, InteractionData
from recfunnel.data.prepare.write import write_dataset
from recfunnel.errors import DataError
from recfunnel.files import atomic_output_dir

__all__ = ["prepare_interaction_dataset"]


def prepare_interaction_dataset(
    data: InteractionData,
    out: str | Path,
    *,
    labels: LabelSpec = LabelSpec(),
    split: SplitSpec = SplitSpec(),
    block_rows: int = 4096,
    compression: str | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    evaluate: Callable[[Path, Manifest], dict] | None = None,
    history: int = HISTORY_LENGTH,
) -> Manifest:
    """Check, split, label, encode and write ``data`` to the dataset folder ``out``; return its manifest.

    history: items in each row's point-in-time ``history`` feature (:mod:`.history`), when the data
    has timestamps; 0 for none.

    evaluate: called with the finished temp folder and manifest before the rename; its dict is
    merged into ``manifest.extra`` (e.g. the synthetic ground truth's recall).
    """
    check_output(out, overwrite, block_rows)
    checked = check_interactions(data)
    check_label_rule(labels, checked.rating is not None, data.inter.name)
    user_codes = pd.factorize(checked.user_id)[0]
    split = split.resolved(checked.timestamp is not None)
    codes, split_record = assign_splits(split, user_codes, checked.timestamp)
    label_array, label_list = derive_labels(labels, checked.rating, checked.label, user_codes, codes, data.inter.name)
    enc = encode_features(checked, data.features, codes)
    if history and checked.timestamp is not None:
        # a split in time predicts what comes next: each row sees its past. A random split predicts
        # held-out rows from anywhere in a user's time line, so each row sees the user's other rows
        kind = "others" if split.kind == "random" else "before"
        enc.history = build_history(enc.user_index, enc.item_index, checked.timestamp, codes, history, kind)
    if checked.timestamp is not None and split.kind != "random":  # a split in time asks about now
        per_user = split.kind == "temporal"  # each user's latest rows held out: each asked about at their own moment
        enc.age = build_example_age(checked.timestamp, codes, enc.user_index, enc.user_vocab.cardinality, per_user)
    _check_derived_names(data, enc)
    manifest = Manifest(
        kind="interactions",
        dense=enc.dense,
        sparse=enc.sparse,
        labels=label_list,
        splits={},
        split=split_record,
        block_rows=block_rows,
        source=data.source,
        roles=_roles(data.features, checked.timestamp is not None, enc.history is not None, enc.age is not None),
        extra=_extra(data, enc, labels, len(codes)),
    )
    with atomic_output_dir(out, overwrite) as tmp:
        manifest.splits = write_dataset(
            tmp, enc, checked, label_array, label_list, codes, split, block_rows, compression, quiet
        )
        if evaluate is not None:
            manifest.extra.update(evaluate(tmp, manifest))
        manifest.save(tmp)
    return manifest


def _check_derived_names(data: InteractionData, enc: Encoded) -> None:
    """A column named like a feature prepare derives from the timestamps would be two features."""
    derived = ([HISTORY] if enc.history is not None else []) + ([EXAMPLE_AGE] if enc.age is not None else [])
    for f in data.features:
        if f.name in derived:
            raise DataError(
                f"{data.inter.name}: column {f.name!r} has the name of a feature prepare derives from the "
                f"timestamps; rename it (--rename {f.name}=NEW)"
            )


def _roles(features: list[Feature], has_timestamp: bool, has_history: bool, has_age: bool) -> dict[str, Any]:
    owned = {o: [f.name for f in features if f.owner == o] for o in OWNERS}
    return {
        "user": "user_id",
        "item": "item_id",
        # the history and the example age describe the user (the catalogue keeps each user's
        # latest history and the moment serving asks about), though in the shards each row has its
        # own, as of that row's time
        "user_features": owned["user"] + ([HISTORY] if has_history else []) + ([EXAMPLE_AGE] if has_age else []),
        "history": HISTORY if has_history else None,
        "example_age": EXAMPLE_AGE if has_age else None,
        "item_features": owned["item"],
        "context_features": owned["context"],
        "timestamp": has_timestamp,
    }


def _extra(data: InteractionData, enc: Encoded, labels: LabelSpec, rows: int) -> dict[str, Any]:
    extra: dict[str, Any] = {
        "rows": rows,
        "users": enc.user_vocab.cardinality - 1,
        "items": enc.item_vocab.cardinality - 1,
        "dense_stats": enc.stats,
    }
    if enc.history is not None:
        extra["history"] = {
            "length": enc.history.length,
            "of": {
                "before": "the user's training rows strictly earlier in time",
                "others": "the user's latest training rows, the row itself left out",
            }[enc.history.kind],
        }
    if enc.age is not None:
        extra["example_age"] = {
            "of": "days from the row to the latest training timestamp (training rows); held-out rows and "
            "users at the moment asked about: "
            + (
                "each user's latest known row"
                if enc.age.per_user
                else "the end of the training data (validation), of the validation data (test, serving)"
            ),
            "end": enc.age.end,
            "known_end": enc.age.known_end,
            "now": enc.age.now,
        }
    if data.rating_range is not None:
        extra["rating_range"] = list(data.rating_range)
    if labels.rule == "user-mean":
        extra["user_mean_on"] = labels.user_mean_on
    return extra
