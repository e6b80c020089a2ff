"""`pip install .` gives everything recfunnel imports: every third-party package imported anywhere in
src/ (inside functions too) is a declared dependency in pyproject.toml."""

import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_packages() -> dict[str, str]:
    """Top-level third-party module -> the first file importing it."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "src" / "recfunnel").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("recfunnel", "__future__"):
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


# Installed before recfunnel, by hand (README, "Installing"): torchrec's metadata requires the CUDA
# build of fbgemm-gpu, which pip would put over fbgemm-gpu-cpu on a CPU machine.
TORCH_TRIO = {"torchrec", "fbgemm-gpu", "fbgemm-gpu-cpu"}


def test_every_imported_package_is_a_declared_dependency():
    declared = {
        _normalise(re.split(r"[<>=!~;\[ ]", dep, maxsplit=1)[0])
        for dep in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    } | TORCH_TRIO
    providers = metadata.packages_distributions()
    missing = {
        module: where
        for module, where in _imported_packages().items()
        if not {_normalise(d) for d in providers.get(module, [module])} & declared
    }
    assert not missing, f"imported but not in pyproject.toml's dependencies: {missing}"
    assert {"fastapi", "uvicorn", "httpx"} <= declared  # `recfunnel serve` and its benchmark client
