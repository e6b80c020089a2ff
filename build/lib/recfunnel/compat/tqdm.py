"""tqdm (4.70): closing every progress bar still open, which tqdm keeps in ``tqdm._instances``."""

from __future__ import annotations

from tqdm import tqdm

__all__ = ["PRIVATE_API", "close_progress_bars", "missing"]

PRIVATE_API: list[tuple[str, str]] = [("tqdm.tqdm", "_instances")]


def missing() -> list[str]:
    """The entries of ``PRIVATE_API`` this tqdm version lacks; empty when all are there."""
    return [f"{where}.{name}" for where, name in PRIVATE_API if not hasattr(tqdm, name)]


def close_progress_bars() -> None:
    """Erase progress bars an error interrupted, so the error stands on a line of its own."""
    for bar in list(getattr(tqdm, "_instances", [])):
        bar.close()
