"""Every private part of another library that recfunnel relies on is still there. An upgrade that
removes one fails here, naming the attribute, rather than deep inside a training run; and no
module outside recfunnel.compat imports another library's private modules."""

import ast
from importlib import metadata
from pathlib import Path

from recfunnel.compat import mlflow as compat_mlflow
from recfunnel.compat import streaming as compat_streaming
from recfunnel.compat import tqdm as compat_tqdm
from tests.data.fixtures import write_tiny_dataset

SRC = Path(__file__).resolve().parents[2] / "src" / "recfunnel"


def test_streaming_still_has_what_the_loader_uses(tmp_path):
    write_tiny_dataset(tmp_path / "data", {"train": 100})
    dataset = compat_streaming.StreamingDataset(
        local=str(tmp_path / "data" / "train"), remote=None, shuffle=False, batch_size=1
    )
    try:
        missing = compat_streaming.missing(dataset)
    finally:
        compat_streaming.release_shared_memory(dataset)
    assert not missing, (
        f"mosaicml-streaming {metadata.version('mosaicml-streaming')} lacks {missing}: "
        f"update recfunnel/compat/streaming.py"
    )


def test_mlflow_still_has_its_global_tracking_uri():
    missing = compat_mlflow.missing()
    assert not missing, f"mlflow {metadata.version('mlflow')} lacks {missing}: update recfunnel/compat/mlflow.py"


def test_tqdm_still_keeps_its_open_bars():
    missing = compat_tqdm.missing()
    assert not missing, f"tqdm {metadata.version('tqdm')} lacks {missing}: update recfunnel/compat/tqdm.py"


def test_a_missing_attribute_is_named():
    class Bare:  # a "dataset" of another streaming version: nothing recfunnel reaches for
        pass

    missing = compat_streaming.missing(Bare())
    assert "StreamingDataset._locals_shm" in missing and "StreamingDataset._set_shuffle_block_size" in missing
    assert not any(name.startswith("streaming.base") for name in missing)  # the module-level parts are there


def test_the_global_tracking_uri_comes_back(monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///before.db")
    before = mlflow.get_tracking_uri()
    with compat_mlflow.global_tracking_uri("sqlite:///during.db"):
        assert mlflow.get_tracking_uri() == "sqlite:///during.db"
    assert mlflow.get_tracking_uri() == before


def _private_imports(path: Path) -> list[str]:
    """``from x._y import z``, ``import x._y`` and ``from x import _y`` of other packages in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "recfunnel":
                continue
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] != "recfunnel"]
        else:
            continue
        found += [
            f"{path.relative_to(SRC)}:{node.lineno} {n}"
            for n in names
            if any(part.startswith("_") and not part.startswith("__") for part in n.split("."))
        ]
    return found


def test_only_compat_imports_private_modules_of_other_libraries():
    found = [hit for path in sorted(SRC.rglob("*.py")) if "compat" not in path.parts for hit in _private_imports(path)]
    assert not found, f"move these behind recfunnel/compat/: {found}"
