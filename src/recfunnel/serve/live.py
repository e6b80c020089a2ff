"""The funnel a service answers with now, and what it runs on: swapped whole when a new model
version is loaded, so that every batch runs on one funnel from start to end.

    live = Live(Served(funnel, version="two-tower runs/tt (3f2a9c1e) + dlrm runs/dlrm (77b0c2d4)"))
    live.current.funnel                  # read once per batch
    live.swap(new_served)                # requests of the batch running now finish on the old one
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from recfunnel.funnel.pipeline import Request

__all__ = ["Served", "Live", "warm_up"]


@dataclass(frozen=True)
class Served:
    funnel: Any  # a Funnel (or what the app uses of one)
    version: str  # what is served, in one line: models and their versions or digests
    versions: dict[str, str] = field(default_factory=dict)  # model spec -> version (what a reload compares)
    loaded_at: float = field(default_factory=time.time)
    folder: Any = None  # a temporary folder of downloaded models to remove once it is no longer served


@dataclass
class Live:
    current: Served
    reloads: int = 0  # versions swapped in
    refused: int = 0  # new versions that failed to load or to answer, and were not swapped in
    last_error: str | None = None  # why the last refused version was refused
    last_check: float | None = None  # when versions were last compared (unix time)
    lock: threading.Lock = field(default_factory=threading.Lock)  # one reload at a time

    def swap(self, served: Served) -> Served:
        """Serve ``served`` from the next batch on; returns what was served."""
        old, self.current = self.current, served
        self.reloads += 1
        self.last_error = None
        return old

    def health(self) -> dict[str, Any]:
        return {
            "version": self.current.version,
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.current.loaded_at)),
            "reloads": self.reloads,
            "refused_versions": self.refused,
            "last_reload_error": self.last_error,
        }


def warm_up(funnel: Any) -> None:
    """One request of each kind, so that state built on first use is built before serving."""
    funnel.recommend_many([Request(None, 1)])
    if len(funnel.users.raw_ids):
        funnel.recommend_many([Request(_plain(funnel.users.raw_ids[0]), 1)] * 2)
    if len(funnel.items.raw_ids):
        funnel.similar_items(_plain(funnel.items.raw_ids[0]), k=1)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value  # numpy scalar -> int / str
