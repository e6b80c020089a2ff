"""Fetch MovieLens 100k into a local cache.

The MovieLens license forbids redistribution, so the files are never committed: they come from the
recbole 1.2.1 wheel on PyPI, which ships them (``recbole/dataset_example/ml-100k/``, RecBole's
atomic-file format: tab-separated, header ``name:type``). Only the files are read; recbole itself is
never installed or imported.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

from recfunnel.errors import DataError

__all__ = ["cache_dir", "fetch_movielens", "ML100K_FILES"]

RECBOLE = "recbole==1.2.1"
ML100K_FILES = ("ml-100k.inter", "ml-100k.user", "ml-100k.item")
_MEMBER_DIR = "recbole/dataset_example/ml-100k/"


def cache_dir() -> Path:
    """``$RECFUNNEL_CACHE``, else ``~/.cache/recfunnel``."""
    return Path(os.environ.get("RECFUNNEL_CACHE") or Path.home() / ".cache" / "recfunnel")


def fetch_movielens(quiet: bool = False) -> Path:
    """The folder holding ``ml-100k.{inter,user,item}``, downloading them on first use."""
    target = cache_dir() / "movielens" / "ml-100k"
    if all((target / f).is_file() for f in ML100K_FILES):
        return target
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    wheel = next(iter(sorted(wheels.glob("recbole-1.2.1-*.whl"))), None)
    if wheel is None:
        if not quiet:
            print(f"fetching MovieLens 100k ({RECBOLE} wheel from the package index) ...", file=sys.stderr)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "--disable-pip-version-check",
            "-d",
            str(wheels),
            RECBOLE,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheel = next(iter(sorted(wheels.glob("recbole-1.2.1-*.whl"))), None)
        if done.returncode != 0 or wheel is None:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise DataError(f"could not download {RECBOLE} to get MovieLens 100k: {last}")
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        with zipfile.ZipFile(wheel) as zf:
            for name in ML100K_FILES:
                with zf.open(_MEMBER_DIR + name) as src, open(tmp / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except (zipfile.BadZipFile, KeyError) as e:
        raise DataError(f"{wheel}: does not hold MovieLens 100k ({e}); delete it and retry") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
