import os

import pytest

# Tests never touch the working folder's MLflow store.
os.environ.setdefault(
    "MLFLOW_TRACKING_URI", "sqlite:///" + os.path.join(os.environ.get("TMPDIR", "/tmp"), "recfunnel-test-mlflow.db")
)


@pytest.fixture
def cli(capsys):
    """Run the console script in-process: returns (exit code, stdout, stderr)."""
    from recfunnel.cli import main

    def call(*argv: str) -> tuple[int, str, str]:
        code = main([str(a) for a in argv])
        out = capsys.readouterr()
        return code, out.out, out.err

    return call
