"""Live model updates: which versions of the served models are the newest, and loading them beside
the ones being served, to swap in only once they answer.

    source = ModelSource("models:/recfunnel-tt@champion", ranker="models:/recfunnel-dlrm@champion")
    live = Live(source.load(source.versions()))
    reloader = Reloader(live, source, every=60)     # checks every minute, on its own thread
    reloader.reload()                               # or now (POST /admin/reload)

A model is a local run or model folder (its version: the digest of its weights, so a run trained
again in place is a new version) or an MLflow model: ``models:/name@alias`` and
``models:/name/latest`` resolve to a numbered version, loaded as that number (the alias may move
during the download); ``runs:/...`` and ``models:/name/3`` never change. A new version is loaded
into a new folder, with its index (the ``--index`` folder when it holds this model's vectors,
else one of the same kind rebuilt in memory), warmed up and asked for a recommendation; only then
is it swapped in. A version that fails any of that is refused: logged, shown in /health, not
tried again, and the old one keeps serving.
"""

from __future__ import annotations

import gc
import logging
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from recfunnel.errors import RecfunnelError
from recfunnel.serve.live import Live, Served, warm_up
from recfunnel.serve.resolve import is_mlflow_uri, resolve_model

__all__ = ["ModelSource", "Reloader"]

log = logging.getLogger("recfunnel.serve")

_MOVING = re.compile(r"^models:/(?P<name>[^/@]+)(@(?P<alias>[^/]+)|/latest)$", re.IGNORECASE)


class ModelSource:
    def __init__(
        self,
        run: str | Path,
        ranker: str | Path | None = None,
        index: str | Path | None = None,
        config: Any = None,
    ) -> None:
        self.run, self.ranker, self.index, self.config = run, ranker, index, config

    @property
    def specs(self) -> list[str | Path]:
        return [self.run] if self.ranker is None else [self.run, self.ranker]

    def versions(self) -> dict[str, str]:
        """Each model's version now: ``version 3`` of an MLflow model, ``digest 3f2a...`` of a folder."""
        return {str(spec): _version(spec) for spec in self.specs}

    def load(self, versions: dict[str, str], first: bool = False) -> Served:
        """The funnel of these ``versions``, downloaded into a new temporary folder, warmed up and
        checked; raises RecfunnelError (naming what failed) when it cannot serve. The index of a
        first load must hold the run's vectors; a later one rebuilds an index that does not."""
        from recfunnel.funnel.pipeline import Funnel

        folder = Path(tempfile.mkdtemp(prefix="recfunnel-serve-"))
        try:
            run = resolve_model(_pinned(self.run, versions[str(self.run)]), folder / "run")
            ranker = (
                resolve_model(_pinned(self.ranker, versions[str(self.ranker)]), folder / "ranker")
                if self.ranker is not None
                else None
            )
            funnel = Funnel.load(
                run,
                index=self.index,
                ranker=ranker,
                config=self.config,
                other_model_index="error" if first else "rebuild",
            )
            warm_up(funnel)
            _check_answers(funnel)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        kinds = [funnel.retriever.kind] + ([funnel.ranker.kind] if funnel.ranker is not None else [])
        label = " + ".join(f"{kind} {spec} ({versions[str(spec)]})" for kind, spec in zip(kinds, self.specs))
        return Served(funnel, label, dict(versions), folder=folder)


def _version(spec: str | Path) -> str:
    if not is_mlflow_uri(spec):
        from recfunnel.store.model import model_digest

        try:
            return f"digest {model_digest(resolve_model(spec))}"
        except (OSError, RecfunnelError) as e:
            raise RecfunnelError(f"{spec}: cannot read the model's weights ({e})") from None
    moving = _MOVING.match(str(spec))
    if moving is None:
        return "fixed"  # runs:/..., models:/name/3, models:/<model_id>: the same model for ever
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name, alias = moving.group("name"), moving.group("alias")
    try:
        client = MlflowClient()
        if alias is not None:
            return f"version {client.get_model_version_by_alias(name, alias).version}"
        numbers = [int(v.version) for v in client.search_model_versions(f"name = '{name}'")]
    except MlflowException as e:
        raise RecfunnelError(f"{spec}: cannot ask MLflow for its version: {str(e).splitlines()[0][:200]}") from None
    if not numbers:
        raise RecfunnelError(f"{spec}: the registered model has no versions")
    return f"version {max(numbers)}"


def _pinned(spec: str | Path, version: str) -> str | Path:
    """``models:/name@alias`` as ``models:/name/3`` when ``version`` is ``version 3``."""
    moving = _MOVING.match(str(spec)) if is_mlflow_uri(spec) else None
    if moving is None:
        return spec
    return f"models:/{moving.group('name')}/{version.removeprefix('version ')}"


def _check_answers(funnel: Any) -> None:
    """A new funnel must recommend to a known user with finite scores (a model of NaN weights, or
    one the index or the ranker do not fit, fails here rather than on requests)."""
    from recfunnel.funnel.pipeline import Request

    if not len(funnel.users.raw_ids):
        return
    user = funnel.users.raw_ids[0]
    [answer] = funnel.recommend_many([Request(user.item() if hasattr(user, "item") else user, 10)])
    scores = np.array([score for _, score in answer.items], dtype=np.float64)
    if not len(scores) or not np.isfinite(scores).all():
        raise RecfunnelError(
            f"its answer to user {user!r} has {'no items' if not len(scores) else 'scores that are not finite'}"
        )


class Reloader:
    """Swaps in new versions of a :class:`ModelSource`'s models: now (``reload``), on a thread
    every ``every`` seconds, and whenever ``trigger`` is called (e.g. from a signal handler)."""

    def __init__(
        self,
        live: Live,
        source: ModelSource,
        every: float | None = None,
        workers: int = 1,
        load: Callable[[dict[str, str]], Served] | None = None,
        on_swap: Callable[[Served], None] | None = None,
    ) -> None:
        """``load(versions)``: how a new version is loaded beside the one served (default: in this
        process, ``source.load``; a process engine loads it in a new funnel process); ``on_swap``
        is given what was served once the new version serves."""
        if every is not None and not every > 0:
            raise ValueError(f"every: expected a number of seconds > 0, got {every!r}")
        self.live, self.source, self.every, self.workers = live, source, every, workers
        self.load, self.on_swap = load, on_swap
        self._refused: dict[tuple[tuple[str, str], ...], str] = {}  # versions -> why they were refused
        self._retired: list[Served] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="model-reloader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for served in self._retired:
            _remove(served)

    def trigger(self) -> None:
        """Check for new versions soon, on the reloader's thread (safe from a signal handler)."""
        self._wake.set()

    def reload(self) -> dict[str, Any]:
        """Check now; swap in new versions that load and answer. What happened, for the caller."""
        error = None
        with self.live.lock:
            self.live.last_check = time.time()
            try:
                versions = self.source.versions()
            except RecfunnelError as e:
                error = f"cannot check versions: {e}"
                versions = self.live.current.versions
            key = tuple(sorted(versions.items()))
            reloaded = False
            if error is None and versions != self.live.current.versions:
                if key in self._refused:
                    error = self._refused[key]
                else:
                    error, reloaded = self._load(versions, key)
        return {"reloaded": reloaded, "version": self.live.current.version, "error": error, "workers": self.workers}

    def _load(self, versions: dict[str, str], key: tuple[tuple[str, str], ...]) -> tuple[str | None, bool]:
        start = time.perf_counter()
        try:
            if self.load is not None:
                served = self.load(versions)
            else:
                with _no_collections():
                    served = self.source.load(versions)
        except Exception as e:  # whatever a broken version does, the old one keeps serving
            error = f"{_describe(versions)} refused: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
            log.error("%s", error, exc_info=not isinstance(e, RecfunnelError))
            self._refused[key] = error
            self.live.refused += 1
            self.live.last_error = error
            return error, False
        old = self.live.swap(served)
        if self.on_swap is not None:
            self.on_swap(old)
        log.warning("now serving %s (loaded in %.1f s)", served.version, time.perf_counter() - start)
        for retired in self._retired:  # kept one swap longer: batches may still run on them
            _remove(retired)
        self._retired = [old]
        return None, True

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.every)
            self._wake.clear()
            if self._stop.is_set():
                return
            self.reload()


@contextmanager
def _no_collections() -> Iterator[None]:
    """Loading a version makes ~400k objects, and the garbage collector, counting them, ran full
    collections of 100+ ms (measured), each stopping the batches of the same process. None runs
    during the load; after it, what was loaded is frozen like the first version was (collections
    skip it), so none has it to walk either."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def _describe(versions: dict[str, str]) -> str:
    return " + ".join(f"{spec} ({version})" for spec, version in versions.items())


def _remove(served: Served) -> None:
    if served.folder is not None:
        shutil.rmtree(served.folder, ignore_errors=True)
