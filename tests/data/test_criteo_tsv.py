"""`recfunnel prepare criteo` on small generated Criteo-format files."""

from pathlib import Path

import numpy as np
import pytest

from recfunnel.data.schema import load_manifest
from recfunnel.data.vocab import Vocab
from tests.data.readback import assert_failed_cleanly, read_split


def criteo_lines(n: int, seed: int = 0, start: int = 0) -> list[str]:
    """Rows whose int_0 is the row's position (so splits can be checked) and cat_0 is 'aa' on even
    rows, 'bb' on rows divisible by 3 (not even), a unique value otherwise; some fields empty."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(start, start + n):
        ints = [str(i)] + [("" if rng.random() < 0.2 else str(int(rng.integers(-2, 1000)))) for _ in range(12)]
        cat0 = "aa" if i % 2 == 0 else ("bb" if i % 3 == 0 else f"u{i:x}")
        cats = [cat0] + [("" if rng.random() < 0.1 else f"{int(rng.integers(0, 50)):08x}") for _ in range(25)]
        lines.append("\t".join([str(int(rng.random() < 0.25))] + ints + cats))
    return lines


@pytest.fixture(scope="module")
def day_files(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("criteo")
    files = []
    for d in range(2):
        path = folder / f"day_{d}"
        path.write_text("\n".join(criteo_lines(600, seed=d, start=600 * d)) + "\n")
        files.append(path)
    return files


def test_ordered_split_keeps_time_order_and_transforms(cli, day_files, tmp_path):
    out = tmp_path / "ds"
    code, _, err = cli("prepare", "criteo", "--input", *day_files, "--out", out, "--block-rows", "100", "--quiet")
    assert code == 0, err
    manifest = load_manifest(out)
    assert {k: v.rows for k, v in manifest.splits.items()} == {"train": 960, "val": 120, "test": 120}
    assert [f["rows"] for f in manifest.source["files"]] == [600, 600] and len(manifest.source["files"][0]["sha256"]) == 64
    positions = {}
    for split in ("train", "val", "test"):
        _, rows = read_split(out, split)
        positions[split] = np.expm1(rows.dense[:, 0].astype(np.float64)).round().astype(int)
    assert sorted(positions["train"]) == list(range(960))  # int_0 = position, log1p-transformed
    assert sorted(positions["val"]) == list(range(960, 1080)) and sorted(positions["test"]) == list(range(1080, 1200))
    assert manifest.dense[0].transform == "log1p" and len(manifest.sparse) == 26


def test_vocabulary_counts_train_only_with_min_count(cli, day_files, tmp_path):
    out = tmp_path / "ds"
    assert cli("prepare", "criteo", "--input", *day_files, "--out", out, "--min-count", "2", "--quiet")[0] == 0
    vocab = Vocab.load(out / "vocab", "cat_0")
    # 'aa' (480 train rows) is the most frequent -> index 1, 'bb' next; unique values -> OOV
    assert list(vocab.values[:2]) == ["aa", "bb"] and len(vocab.values) == 2
    _, rows = read_split(out, "train")
    pos = np.expm1(rows.dense[:, 0].astype(np.float64)).round().astype(int)
    expected = np.where(pos % 2 == 0, 1, np.where(pos % 3 == 0, 2, 0))
    assert np.array_equal(rows.sparse[:, 0], expected)


def test_hashing_and_random_split(cli, day_files, tmp_path):
    out = tmp_path / "hashed"
    code, _, err = cli("prepare", "criteo", "--input", *day_files, "--out", out, "--hash-buckets", "1000",
                       "--split", "random", "--quiet")
    assert code == 0, err
    manifest = load_manifest(out)
    assert all(f.encoding == "hash" and f.cardinality == 1000 for f in manifest.sparse)
    assert not (out / "vocab").exists()
    _, rows = read_split(out, "test")
    assert 80 < manifest.splits["test"].rows < 160 and rows.sparse.max() < 1000
    pos = np.expm1(rows.dense[:, 0].astype(np.float64)).round().astype(int)
    assert pos.max() - pos.min() > 800  # drawn from the whole range, not the end


def test_max_rows(cli, day_files, tmp_path):
    out = tmp_path / "few"
    assert cli("prepare", "criteo", "--input", *day_files, "--out", out, "--max-rows", "700", "--quiet")[0] == 0
    assert sum(s.rows for s in load_manifest(out).splits.values()) == 700


@pytest.mark.parametrize("bad_line, expected", [
    ("1\t2\t3", "line 4: 3 fields, expected 40"),
    ("\t".join(["0", "12", "abc"] + [""] * 37), "line 4: column int_1 is 'abc', expected an integer or empty"),
    ("\t".join(["2", "1"] + [""] * 38), "line 4: label 2, expected 0 or 1"),
    ("\t".join(["0", "nan"] + [""] * 38), "line 4: column int_0 is nan, expected an integer or empty"),
    ("\t".join(["0", "1.5"] + [""] * 38), "line 4: column int_0 is 1.5, expected an integer or empty"),
])
def test_bad_rows_name_file_and_line(cli, tmp_path, bad_line, expected):
    path = tmp_path / "day_0"
    path.write_text("\n".join(criteo_lines(3) + [bad_line] + criteo_lines(3, start=3)) + "\n")
    out = tmp_path / "out"
    assert_failed_cleanly(cli("prepare", "criteo", "--input", path, "--out", out), out, f"{path} {expected}")


def test_empty_and_missing_files(cli, tmp_path):
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    out = tmp_path / "out"
    assert_failed_cleanly(cli("prepare", "criteo", "--input", empty, "--out", out), out, f"{empty}: empty file")
    missing = tmp_path / "nope.tsv"
    assert_failed_cleanly(cli("prepare", "criteo", "--input", missing, "--out", out), out, f"{missing}: no such file")
