"""The README's first command does what the README says it prints."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_make_demo_prints_what_the_readme_shows(tmp_path):
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"`make demo` prints[^\n]*:\n\n```\n(.*?)```", readme, re.S).group(1)
    quoted = [line for line in block.splitlines() if line.strip() and "..." not in line]
    done = subprocess.run(
        ["make", "demo", f"DEMO_DIR={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout.replace(str(tmp_path), ".demo")
    for line in quoted:
        pattern = re.escape(line).replace(r"\*", r"[\d,.]+")  # '*' in the README stands for a measured number
        # decimals (metrics of one run) may differ in their last digits, and so may column widths
        pattern = re.sub(r"\d+(\\\.\d+)?(?=\\ |$)", r"[\\d,.]+", pattern)
        pattern = re.sub(r"(\\ )+", r"\\s+", pattern)
        assert re.search(pattern, out), f"README line not in `make demo` output: {line!r}"
