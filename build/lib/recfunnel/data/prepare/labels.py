"""Binary labels of user-item interactions, derived from ratings (or given, or implied).

Rules (``--label``):

``threshold``  rating >= ``--threshold`` (default 4): the classic "liked it" label.
``user-mean``  rating >= the user's own mean rating (the reference notebook's rule). Means come
               from train rows only by default (``--user-mean-on train``), so val/test ratings never
               leak into train labels; users without train rows fall back to the global train mean.
``all``        every rating is a positive (the TensorFlow Recommenders retrieval protocol).
``auto``       a given ``label`` column if there is one, else ``threshold`` when there are ratings,
               else implicit feedback: every row is a positive.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import numpy as np

from recfunnel.data.format.manifest import Label
from recfunnel.data.prepare.splits import TRAIN
from recfunnel.errors import ConfigError

__all__ = ["LABEL_RULES", "LabelSpec", "check_label_rule", "derive_labels", "add_label_arguments", "label_kwargs"]

LABEL_RULES = ("auto", "threshold", "user-mean", "all")


@dataclass(frozen=True)
class LabelSpec:
    rule: str = "auto"
    threshold: float = 4.0
    user_mean_on: str = "train"  # train | all

    def __post_init__(self) -> None:
        if self.rule not in LABEL_RULES:
            raise ConfigError(f"--label: {self.rule!r} is not one of {', '.join(LABEL_RULES)}")
        if self.user_mean_on not in ("train", "all"):
            raise ConfigError(f"--user-mean-on: {self.user_mean_on!r} is not one of train, all")


def check_label_rule(spec: LabelSpec, has_rating: bool, where: str) -> None:
    """Rules other than auto derive labels from ratings: fail early (before splitting) without them."""
    if spec.rule != "auto" and not has_rating:
        raise ConfigError(f"--label {spec.rule} derives labels from ratings, and {where} has no rating column")


def derive_labels(
    spec: LabelSpec,
    rating: np.ndarray | None,
    given: np.ndarray | None,
    users: np.ndarray,
    codes: np.ndarray,
    where: str,
) -> tuple[np.ndarray, list[Label]]:
    """Labels per row, float32 (n, L), and their manifest entries (``label`` first, then ``rating``).

    rating: float (n,) or None; given: a 0/1 ``label`` column (n,) or None; users: user code per
    row, int (n,); codes: split code per row (``TRAIN`` = 0), int8 (n,); where: the file, for messages.
    """
    n = len(users)
    check_label_rule(spec, rating is not None, where)
    if spec.rule == "auto" and given is not None:
        label, text = given.astype(np.float32), f"given in column 'label' of {where}"
    elif spec.rule == "all" or rating is None:  # auto without ratings: implicit feedback
        label = np.ones(n, np.float32)
        text = "every rating is a positive" if spec.rule == "all" else "implicit: every row is a positive"
    elif spec.rule in ("auto", "threshold"):
        label, text = (rating >= spec.threshold).astype(np.float32), f"rating >= {spec.threshold:g}"
    else:
        label, text = _user_mean_labels(rating, users, codes, spec.user_mean_on)
    labels = [Label("label", "binary", text)]
    columns = [label]
    if rating is not None:
        labels.append(Label("rating", "regression", "the rating as given"))
        columns.append(rating.astype(np.float32))
    return np.column_stack(columns).astype(np.float32, copy=False), labels


def _user_mean_labels(rating: np.ndarray, users: np.ndarray, codes: np.ndarray, on: str) -> tuple[np.ndarray, str]:
    """rating >= the user's mean rating, the mean over train rows (or all rows)."""
    rows = codes == TRAIN if on == "train" else np.ones(len(rating), bool)
    n_users = int(users.max()) + 1 if len(users) else 0
    sums = np.bincount(users[rows], weights=rating[rows], minlength=n_users)
    counts = np.bincount(users[rows], minlength=n_users)
    fallback = float(rating[rows].mean())
    means = np.divide(sums, counts, out=np.full(n_users, fallback), where=counts > 0)
    # Compare with a tolerance: a user whose ratings are all equal sits exactly on the mean.
    label = (rating >= means[users] - 1e-9).astype(np.float32)
    if on == "train":
        return label, "rating >= the user's mean rating over train rows (the global train mean for users without any)"
    return label, "rating >= the user's mean rating over all rows (val/test ratings included)"


def add_label_arguments(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """``--label``, ``--threshold``, ``--user-mean-on``."""
    g = parser.add_argument_group("labels")
    g.add_argument(
        "--label",
        choices=LABEL_RULES,
        default=default,
        help="how the binary label is made: threshold (rating >= --threshold) | user-mean (rating >= "
        "the user's mean) | all (every rating is a positive) | auto (a given label column, else "
        f"threshold, else every row is a positive) (default {default})",
    )
    g.add_argument(
        "--threshold", type=float, default=4.0, help="--label threshold: the lowest liked rating (default 4)"
    )
    g.add_argument(
        "--user-mean-on",
        choices=("train", "all"),
        default="train",
        help="--label user-mean: compute each user's mean on train rows (no leakage) or all rows (default train)",
    )


def label_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The label options of parsed CLI arguments, as keyword arguments of the ``prepare_*`` functions."""
    return {"label": args.label, "threshold": args.threshold, "user_mean_on": args.user_mean_on}
