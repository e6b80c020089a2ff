"""User history: for each interaction row, the items of the same user's earlier rows, the latest
first, at most ``length`` of them.

In a split in time (``before``) a row sees rows strictly earlier than itself: rows that share a
timestamp never see each other (nor themselves), whatever their order in the file, so no row's
history holds its own item or anything after it. In a random split (``others``), whose held-out
rows come from anywhere in a user's time line, a row sees the user's latest rows but itself
(point-in-time histories there trained the model on what the user did just before, and evaluation
then asked about any moment: top-100 accuracy 0.39 instead of 0.62 on MovieLens 100k).

Which rows a history may hold is what was known at the row's stage: training and validation rows
see training rows only; test rows see training and validation rows (the validation period came
before the test one, and serving knows both). The catalogue keeps each user's latest history both
ways: ``history`` (training + validation: test and serving) and ``history_before_val`` (training
only: the validation split's moment). No test row is ever in a history, and a validation row is only
in test rows' histories.

Histories are computed per block of rows when written (``take``), from sorted arrays, so a
30M-row input does not hold 30M x ``length`` ids at once.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

from recfunnel.data.format.catalog import before_val_column
from recfunnel.data.format.rows import jagged_take
from recfunnel.data.prepare.splits import TEST, TRAIN, VAL
from recfunnel.errors import DataError

__all__ = ["HISTORY", "HISTORY_BEFORE_VAL", "HISTORY_LENGTH", "History", "build_history", "add_history_argument"]

HISTORY = "history"  # the feature's name in the manifest (a multi-hot of item_id indices)
HISTORY_BEFORE_VAL = before_val_column(HISTORY)  # the users table's column of each history before val
HISTORY_LENGTH = 50  # items kept, the latest first


@dataclass
class Known:
    """The rows a history may hold at one stage, sorted by (user, time rank) key."""

    keys: np.ndarray  # int64 (t,)
    items: np.ndarray  # int64 (t,): their item indices, in that order


@dataclass
class History:
    train: Known  # what training and validation rows see
    seen: Known  # what test rows (and serving) see: training and validation rows
    row_keys: np.ndarray  # int64 (n,): every row's (user, time rank) key
    is_test: np.ndarray  # bool (n,)
    span: int  # time ranks per user in a key: key = user * span + time rank
    length: int
    kind: str = "before"  # before (point in time) | others (all the user's other rows)
    row_position: np.ndarray | None = None  # int64 (n,): a training row's place in train.keys, else -1

    def take(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lengths int32 (k,), item indices int64) of rows ``idx``' histories, the latest first."""
        idx = np.asarray(idx, np.int64)
        test = self.is_test[idx]
        if not test.any():
            return self._take(idx, self.train)
        if test.all():
            return self._take(idx, self.seen)
        # both kinds of rows, the test rows after the others, then put back in the order asked
        order = np.concatenate([np.flatnonzero(~test), np.flatnonzero(test)])
        parts = [self._take(idx[~test], self.train), self._take(idx[test], self.seen)]
        lengths, values = jagged_take(
            np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), np.argsort(order)
        )
        return lengths.astype(np.int32), values

    def _take(self, idx: np.ndarray, known: Known) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "before":
            return self._before(known, self.row_keys[idx])
        users = self.row_keys[idx] // self.span
        # a training row leaves itself out (test rows are in neither array; val rows not in train's)
        skip = self.row_position[idx] if self.row_position is not None and known is self.train else None
        return self._before(known, users * self.span + self.span - 1, skip=skip)

    def latest(self, users: np.ndarray, through_val: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(lengths, item indices) of the histories of ``users`` (user indices) after all their
        training and validation rows (``through_val``: serving, test), or their training rows only."""
        known = self.seen if through_val else self.train
        return self._before(known, np.asarray(users, np.int64) * self.span + self.span - 1)

    def _before(self, known: Known, keys: np.ndarray, skip: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The latest ``length`` known rows strictly before each key, of its user; with ``skip``
        (a place in ``known.keys`` per row, or -1), that row is left out and the one before it comes in."""
        end = np.searchsorted(known.keys, keys, side="left")  # known rows strictly before
        first = np.searchsorted(known.keys, keys - keys % self.span, side="left")  # the user's first
        extra = 0 if skip is None else 1
        begin = np.maximum(first, end - self.length - extra)
        lengths = end - begin
        total = int(lengths.sum())
        back = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        place = np.repeat(end - 1, lengths) - back
        if skip is None:
            return lengths.astype(np.int32), known.items[place]
        # leave out the row itself when it is in the window, else the window's oldest if it is full
        drop = np.where((skip >= begin) & (skip < end), skip, np.where(lengths > self.length, begin, -1))
        keep = place != np.repeat(drop, lengths)
        return (lengths - (drop >= 0)).astype(np.int32), known.items[place[keep]]


def build_history(
    user_index: np.ndarray,
    item_index: np.ndarray,
    timestamps: np.ndarray,
    codes: np.ndarray,
    length: int,
    kind: str = "before",
) -> History:
    """The history of every row from the rows of its user known at its stage (training rows; for
    test rows training and validation rows); ids are vocabulary indices (int64 (n,) each),
    ``timestamps`` numeric (n,), ``codes`` the split codes. ``kind``: ``before``, the rows strictly
    earlier in time; ``others``, the user's latest known rows but the row itself."""
    _, rank = np.unique(timestamps, return_inverse=True)
    span = int(rank.max(initial=0)) + 2  # rank span - 1 is after every row: a user's latest history
    if (int(user_index.max(initial=0)) + 1) * span >= 2**62:
        raise DataError(
            f"history: {span - 1:,} distinct timestamps for that many users overflow 64 bits; use --history 0"
        )
    row_keys = user_index.astype(np.int64) * span + rank.astype(np.int64)

    def known(rows: np.ndarray) -> tuple[Known, np.ndarray]:
        order = rows[np.argsort(row_keys[rows], kind="stable")]
        return Known(row_keys[order], item_index[order].astype(np.int64)), order

    train, order = known(np.flatnonzero(codes == TRAIN))
    seen, _ = known(np.flatnonzero((codes == TRAIN) | (codes == VAL)))
    position = None
    if kind == "others":  # a training row leaves itself out: where it is among the sorted keys
        position = np.full(len(row_keys), -1, np.int64)
        position[order] = np.arange(len(order))
    return History(train, seen, row_keys, codes == TEST, span, length, kind, position)


def add_history_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--history",
        type=int,
        default=HISTORY_LENGTH,
        metavar="N",
        help="items in each row's `history` feature: the user's latest training interactions, the "
        "latest first; in a split in time those before the row's time, in a random split all but the "
        f"row itself (data with timestamps; 0 = none; default {HISTORY_LENGTH})",
    )
