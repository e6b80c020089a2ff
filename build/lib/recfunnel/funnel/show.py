"""Recommendations for people to read: titles and item attributes instead of ids.

recfunnel recommend --run RUN --ranker RANKER --user 196 --user 405 --k 10
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recfunnel.data.format.vocab import Vocab
from recfunnel.funnel.pipeline import Funnel
from recfunnel.report import table

__all__ = ["show_recommendations"]


def _describe(funnel: Funnel, rows: np.ndarray) -> tuple[list[str], list[str]]:
    """(titles, attribute text) of catalogue rows: the title column (else the id) and the values of
    the first multi-hot item feature (e.g. genres), decoded with its vocabulary."""
    frame = funnel.items.frame
    titles = [str(frame["title"].iloc[r]) if "title" in frame.columns else str(funnel.items.raw_ids[r]) for r in rows]
    name = next(iter(funnel.items.multi), None)
    if name is None:
        return titles, [""] * len(rows)
    values = Vocab.load(funnel.retriever.folder / "vocab", name).values
    lengths, ids = funnel.items.multi[name]
    starts = np.concatenate([[0], np.cumsum(lengths)])
    return titles, [", ".join(str(values[i - 1]) for i in ids[starts[r] : starts[r + 1]] if i > 0) for r in rows]


def show_recommendations(funnel: Funnel, users: list[Any], k: int = 10) -> str:
    """A table per user: what they liked most in training, then the funnel's top ``k``."""
    blocks = []
    for user_id in users:
        rec = funnel.recommend(user_id=user_id, k=k)
        rows = funnel.item_rows.get_indexer([item for item, _ in rec.items])
        titles, attributes = _describe(funnel, rows)
        lines = [
            [rank + 1, title, attribute, score]
            for rank, (title, attribute, (_, score)) in enumerate(zip(titles, attributes, rec.items))
        ]
        seen = (
            funnel.interactions.seen(int(funnel.users.index[funnel.user_rows.get_loc(user_id)]))
            if rec.source == "user"
            else np.zeros(0, np.int64)
        )
        liked = _describe(funnel, funnel.items.positions_of(seen[:3]))[0] if len(seen) else []
        title = f"\nuser {user_id} ({rec.source}" + (f"; watched e.g. {'; '.join(liked)}" if liked else "") + ")"
        timings = ", ".join(f"{stage} {ms:.1f} ms" for stage, ms in rec.timings.items())
        blocks.append(
            table(lines, ["#", "title", "genres" if funnel.items.multi else "", "score"], title=title) + f"\n{timings}"
        )
    return "\n".join(blocks)
