import json
import subprocess
from pathlib import Path

import pytest

from recfunnel.cli import PREPARE_SOURCES, build_parser
from tests.data.fixtures import write_tiny_dataset

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "tiny"
    write_tiny_dataset(out, {"train": 2000, "val": 300}, block_rows=128)
    return out


def test_every_command_has_help(capsys):
    parser = build_parser()
    commands = [["fetch"], ["inspect"], ["validate"], ["bench", "data"], ["prepare"]]
    commands += [["prepare", name] for name in PREPARE_SOURCES]
    for argv in commands:
        with pytest.raises(SystemExit) as done:
            parser.parse_args(argv + ["--help"])
        assert done.value.code == 0
        assert "usage: recfunnel " + " ".join(argv) in capsys.readouterr().out


def test_inspect_shows_splits_and_a_batch(cli, tiny):
    code, out, _ = cli("inspect", tiny)
    assert code == 0
    assert "train  2,000" in out and "val      300" in out
    assert "loader, one epoch of 'train': 2,000 rows" in out
    assert "sparse KeyedJaggedTensor keys ['row', 'small', 'tags']" in out


def test_validate_accepts_good_and_names_the_bad_shard(cli, tiny, tmp_path):
    assert cli("validate", tiny)[0] == 0
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny, broken)
    shard = next((broken / "val").glob("shard.*.mds"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, flipped bits: only the content hash can tell
    shard.write_bytes(bytes(data))
    assert cli("validate", broken, "--fast")[0] == 0
    code, _, err = cli("validate", broken)
    assert code == 2
    assert err.strip() == f"recfunnel: error: {shard}: content hash does not match index.json; the shard is corrupt"


def test_bench_data_json_has_the_three_rates(cli, tiny):
    code, out, _ = cli("bench", "data", tiny, "--json", "--seconds", "0.2", "--repeats", "1", "--batch-size", "256")
    assert code == 0
    result = json.loads(out)
    for key in ("loader_rows_per_s", "parquet_rows_per_s", "per_row_mds_rows_per_s"):
        assert result[key] > 0
    assert result["loader_vs_parquet"] == pytest.approx(
        result["loader_rows_per_s"] / result["parquet_rows_per_s"], rel=0.01
    )


def test_missing_dataset_is_one_line(cli, tmp_path):
    code, out, err = cli("inspect", tmp_path / "nope")
    assert code == 2 and out == ""
    assert err.startswith("recfunnel: error: ") and err.count("\n") == 1 and "no manifest" in err


@pytest.mark.slow
def test_setup_is_idempotent():
    """`make test` ran setup just before: with an unchanged lock, setup installs nothing."""
    done = subprocess.run(["bash", "scripts/setup.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "installing" not in done.stdout + done.stderr


def test_a_missing_torchrec_is_one_line_saying_how_to_install_it(cli, monkeypatch):
    import recfunnel.cli

    def without_torchrec(argv):
        raise ModuleNotFoundError("No module named 'torchrec'", name="torchrec")

    monkeypatch.setattr(recfunnel.cli, "run", without_torchrec)
    code, _, err = cli("train", "--model", "dlrm", "--data", "x", "--out", "y")
    assert code == 2 and err.count("\n") == 1 and "torchrec is not installed; install the torch trio" in err
