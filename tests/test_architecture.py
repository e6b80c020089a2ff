"""The maps of the house match the house: docs/architecture.md names every module, and the README's
layout section names every package and nothing that is not there."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "recfunnel"


def _modules() -> list[Path]:
    return sorted(p.relative_to(PACKAGE) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")


def _bullets(text: str) -> list[str]:
    """Markdown list items, each with its continuation lines."""
    items: list[str] = []
    for line in text.splitlines():
        if line.startswith("- "):
            items.append(line)
        elif items and line.startswith("  ") and line.strip():
            items[-1] += " " + line.strip()
        elif not line.strip():
            items.append("")
    return [item for item in items if item]


def test_architecture_doc_names_every_module():
    bullets = _bullets((ROOT / "docs" / "architecture.md").read_text())
    missing = []
    for module in _modules():
        folder = f"{module.parent}/" if module.parent != Path(".") else ""
        if not any(
            f"`{folder}{module.name}`" in b or (folder and folder in b and f"`{module.name}`" in b) for b in bullets
        ):
            missing.append(str(module))
    assert not missing, f"docs/architecture.md does not describe: {missing}"


def _layout_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Layout", 1)[1]
    return section.split("```", 2)[1]


def test_readme_layout_names_every_package_and_only_real_paths():
    block = _layout_block()
    packages = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("__init__.py"))
    for init in packages:
        folder = init.removesuffix("/__init__.py").rsplit("/", 1)[-1]
        if init != "__init__.py":
            assert re.search(rf"\b{re.escape(folder)}/", block), f"README layout lacks the package {folder}/"
    # every file or folder the block names (word/ or word.py) exists somewhere in the tree
    for name in re.findall(r"\b([\w-]+(?:\.py|/))", block):
        stem = name.rstrip("/")
        found = list(PACKAGE.rglob(stem)) or list(ROOT.glob(stem)) or list((ROOT / "src").glob(stem))
        assert found, f"README layout names {name}, which is not in the tree"
