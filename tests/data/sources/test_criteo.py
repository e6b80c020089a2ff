"""`recfunnel prepare criteo` (recfunnel.data.sources.criteo) on small generated Criteo-format files."""

import hashlib
from pathlib import Path

import numpy as np
import pytest

import recfunnel.cli
from recfunnel.data.format.manifest import load_manifest
from recfunnel.data.format.vocab import Vocab, hash_encode
from recfunnel.data.sources import criteo, criteo_text
from tests.data.readback import assert_failed_cleanly, read_split


@pytest.fixture
def run(cli, monkeypatch):
    """`recfunnel prepare criteo ...` through the console script, served by this module."""
    monkeypatch.setitem(recfunnel.cli.PREPARE_SOURCES, "criteo", ("recfunnel.data.sources.criteo", criteo.HELP))
    return lambda *args: cli("prepare", "criteo", *args)


@pytest.fixture
def small_blocks(monkeypatch):
    """Parse 4 KB at a time, so a file spans many batches and line checkpoints."""
    monkeypatch.setattr(criteo_text, "READ_BLOCK", 4096)


def line(position: int, rng: np.random.Generator, cat0: str | None = None) -> str:
    """int_0 = the row's position (to check splits); int_1 -7..99 (negatives -> 0); some fields empty;
    cat_0 given, the other categoricals 8-digit hex ids."""
    ints = [str(position), str(int(rng.integers(-7, 100)))]
    ints += ["" if rng.random() < 0.2 else str(int(rng.integers(0, 1000))) for _ in range(11)]
    cats = [cat0 or f"{position:08x}"] + [
        "" if rng.random() < 0.1 else f"{int(rng.integers(0, 40)):08x}" for _ in range(25)
    ]
    return "\t".join([str(int(rng.random() < 0.3))] + ints + cats)


def write_days(folder: Path, days: int = 2, rows: int = 600, cat0=None) -> list[Path]:
    """``days`` files of ``rows`` lines each; ``cat0(position)`` chooses cat_0."""
    rng = np.random.default_rng(0)
    files = []
    for d in range(days):
        path = folder / f"day_{d}"
        positions = range(d * rows, (d + 1) * rows)
        path.write_text("".join(line(p, rng, cat0(p) if cat0 else None) + "\n" for p in positions))
        files.append(path)
    return files


def positions(rows) -> np.ndarray:
    return np.expm1(rows.dense[:, 0].astype(np.float64)).round().astype(int)


def test_ordered_split_keeps_time_order_and_transforms_dense(run, tmp_path, small_blocks):
    files = write_days(tmp_path)
    out = tmp_path / "ds"
    code, _, err = run("--input", *files, "--out", out, "--block-rows", "100", "--quiet")
    assert code == 0, err
    m = load_manifest(out)
    assert {k: v.rows for k, v in m.splits.items()} == {"train": 960, "val": 120, "test": 120}
    assert m.split["cuts"] == {"val": 960, "test": 1080} and m.kind == "ctr"
    got = {name: read_split(out, name)[1] for name in ("train", "val", "test")}
    assert sorted(positions(got["train"])) == list(range(960))
    assert list(positions(got["val"])) == list(range(960, 1080))  # val / test keep file order
    assert list(positions(got["test"])) == list(range(1080, 1200))
    raw = [ln.split("\t") for ln in files[1].read_text().splitlines()[-120:]]
    int1 = np.array([max(int(r[2]), 0) for r in raw], np.float64)
    assert np.allclose(got["test"].dense[:, 1], np.log1p(int1), atol=1e-6)  # negative -> 0, then log1p
    int5 = np.array([float(r[6] or 0) for r in raw])
    assert np.allclose(got["test"].dense[:, 5], np.log1p(int5), atol=1e-6)  # missing -> 0
    assert np.array_equal(got["test"].labels[:, 0], [float(r[0]) for r in raw])
    assert [f.name for f in m.dense] == criteo_text.DENSE and all(f.transform == "log1p" for f in m.dense)


def test_vocabulary_counts_only_training_rows(run, tmp_path, small_blocks):
    """cat_0: 'aaaaaaaa' on every 2nd row, 'u1' (not hex) on every 5th, 'late' only in val/test,
    rows 0..2 '0000000f' (3 = min_count: kept), rows 3..4 'beef' (2: too rare); unique ids otherwise."""

    def cat0(p):
        if p >= 960 and p % 3 == 0:
            return "late"
        if p < 3:
            return "0000000f"
        if p < 5:
            return "beef"
        return "aaaaaaaa" if p % 2 == 0 else ("u1" if p % 5 == 0 else None)

    files = write_days(tmp_path, cat0=cat0)
    out = tmp_path / "ds"
    assert run("--input", *files, "--out", out, "--min-count", "3", "--quiet")[0] == 0
    vocab = Vocab.load(out / "vocab", "cat_0")
    train = np.arange(960)
    counts = {
        "aaaaaaaa": int(((train % 2 == 0) & (train >= 5)).sum()),
        "u1": int(((train % 2 == 1) & (train % 5 == 0)).sum()),
        "0000000f": 3,
    }
    assert list(vocab.values) == ["aaaaaaaa", "u1", "0000000f"]  # by count, then value
    assert list(vocab.counts) == [counts[v] for v in vocab.values]
    assert load_manifest(out).feature("cat_0").cardinality == 4
    for split in ("train", "test"):
        rows = read_split(out, split)[1]
        expected = np.array([{"aaaaaaaa": 1, "u1": 2, "0000000f": 3}.get(cat0(p), 0) for p in positions(rows)])
        assert np.array_equal(rows.sparse[:, 0], expected)


def test_tail_spanning_files_is_subtracted(run, tmp_path, small_blocks):
    """val + test = 60% of 2 files: the cut falls inside the first file."""
    files = write_days(tmp_path, cat0=lambda p: "cafe" if p >= 480 else f"{p % 7:x}")
    out = tmp_path / "ds"
    assert (
        run(
            "--input",
            *files,
            "--out",
            out,
            "--val-fraction",
            "0.3",
            "--test-fraction",
            "0.3",
            "--min-count",
            "1",
            "--quiet",
        )[0]
        == 0
    )
    vocab = Vocab.load(out / "vocab", "cat_0")
    assert sorted(vocab.values) == [f"{i:x}" for i in range(7)] and vocab.counts.sum() == 480


def test_random_split_depends_on_seed_and_position_only(run, tmp_path, monkeypatch):
    files = write_days(tmp_path)
    split_of = {}
    for name, block in (("a", 4096), ("b", 1 << 20)):
        monkeypatch.setattr(criteo_text, "READ_BLOCK", block)
        out = tmp_path / name
        assert run("--input", *files, "--out", out, "--split", "random", "--seed", "1", "--quiet")[0] == 0
        split_of[name] = {s: sorted(positions(read_split(out, s)[1])) for s in ("train", "val", "test")}
    assert split_of["a"] == split_of["b"]  # the parser's block size does not matter
    test = split_of["a"]["test"]
    assert 80 < len(test) < 160 and max(test) - min(test) > 800
    m = load_manifest(tmp_path / "a")
    assert m.split["kind"] == "random" and m.split["rows"]["test"] == len(test)
    plan = criteo._Plan("random", 0.1, 0.1, seed=2)
    assert sorted(np.flatnonzero(plan.random_codes(0, 1200) == 2)) != test  # another seed, other rows


def test_hash_buckets_match_hash_encode(run, tmp_path):
    files = write_days(tmp_path, days=1)
    out = tmp_path / "hashed"
    assert (
        run(
            "--input",
            *files,
            "--out",
            out,
            "--hash-buckets",
            "1000",
            "--test-fraction",
            "0.5",
            "--val-fraction",
            "0",
            "--quiet",
        )[0]
        == 0
    )
    m = load_manifest(out)
    assert all(f.encoding == "hash" and f.cardinality == 1000 for f in m.sparse) and set(m.splits) == {"train", "test"}
    assert not (out / "vocab").exists()
    rows = read_split(out, "test")[1]
    raw = [ln.split("\t") for ln in files[0].read_text().splitlines()[300:]]
    for j in (0, 7):  # cat_0 unique ids; cat_7 repeated ids with missing values
        values = np.array([r[14 + j] or None for r in raw], dtype=object)
        assert np.array_equal(rows.sparse[:, j], hash_encode(values, 1000))


def test_sources_are_hashed_and_max_rows_cuts(run, tmp_path):
    files = write_days(tmp_path)
    out = tmp_path / "all"
    assert run("--input", *files, "--out", out, "--quiet")[0] == 0
    records = load_manifest(out).source["files"]
    assert [r["sha256"] for r in records] == [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    assert [r["rows"] for r in records] == [600, 600] and not any("partial" in r for r in records)
    out = tmp_path / "few"
    assert run("--input", *files, "--out", out, "--max-rows", "700", "--quiet")[0] == 0
    m = load_manifest(out)
    assert sum(s.rows for s in m.splits.values()) == 700 and m.source["rows"] == 700
    first_100 = "".join(files[1].read_text().splitlines(keepends=True)[:100]).encode()
    assert m.source["files"][1] == {
        "name": "day_1",
        "sha256": hashlib.sha256(first_100).hexdigest(),
        "bytes": len(first_100),
        "rows": 100,
        "partial": True,
    }
    out = tmp_path / "one"
    assert run("--input", *files, "--out", out, "--max-rows", "600", "--quiet")[0] == 0
    assert len(load_manifest(out).source["files"]) == 1  # the second file is not read at all


def test_existing_output_needs_overwrite(run, tmp_path):
    files = write_days(tmp_path, days=1, rows=50)
    out = tmp_path / "ds"
    assert run("--input", *files, "--out", out, "--quiet")[0] == 0
    code, _, err = run("--input", *files, "--out", out, "--quiet")
    assert code == 2 and "already exists; pass --overwrite" in err
    assert run("--input", *files, "--out", out, "--overwrite", "--quiet")[0] == 0


def good(n: int, start: int = 0) -> list[str]:
    rng = np.random.default_rng(start)
    return [line(p, rng) for p in range(start, start + n)]


@pytest.mark.parametrize(
    "bad, n, expected",
    [
        ("1\t2\t3", 300, "line {n}: 3 fields, expected 40"),
        (
            "\t".join(["0", "12", "abc"] + [""] * 37),
            300,
            "line {n}: column int_1 is 'abc', expected an integer or empty",
        ),
        ("\t".join(["2", "1"] + [""] * 38), 300, "line {n}: label 2, expected 0 or 1"),
        ("\t".join(["yes", "1"] + [""] * 38), 4, "line {n}: label 'yes', expected 0 or 1"),
        ("\t".join(["0", "nan"] + [""] * 38), 4, "line {n}: column int_0 is nan, expected an integer or empty (NaN"),
        (
            "\t".join(["0", "5", "-inf"] + [""] * 37),
            4,
            "line {n}: column int_1 is -inf, expected an integer or empty (NaN",
        ),
        ("\t".join(["0", "1.5"] + [""] * 38), 4, "line {n}: column int_0 is 1.5, expected an integer or empty"),
        ("", 4, "line {n}: label is empty, expected 0 or 1"),
    ],
)
def test_bad_lines_name_file_line_and_column(run, tmp_path, small_blocks, bad, expected, n):
    first = tmp_path / "day_0"
    first.write_text("\n".join(good(50)) + "\n")
    path = tmp_path / "day_1"  # the second file: line numbers restart
    path.write_text("\n".join(good(n - 1, 50) + [bad] + good(3, 50 + n)) + "\n")
    out = tmp_path / "out"
    assert_failed_cleanly(run("--input", first, path, "--out", out), out, f"{path} {expected.format(n=n)}")


def test_empty_missing_and_directory_inputs(run, tmp_path):
    out = tmp_path / "out"
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    assert_failed_cleanly(run("--input", empty, "--out", out), out, f"{empty}: empty file")
    missing = tmp_path / "nope.tsv"
    assert_failed_cleanly(run("--input", missing, "--out", out), out, f"{missing}: no such file")
    assert_failed_cleanly(run("--input", tmp_path, "--out", out), out, f"{tmp_path}: not a file")


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--min-count", "0"], "--min-count: 0, expected >= 1"),
        (["--hash-buckets", "1"], "--hash-buckets: 1, expected >= 2"),
        (["--test-fraction", "0"], "--test-fraction: 0 leaves no test split"),
        (["--val-fraction", "0.5", "--test-fraction", "0.5"], "leave no rows for train"),
        (["--max-rows", "0"], "--max-rows: 0, expected >= 1"),
        (["--max-rows", "2"], "2 rows are too few"),
    ],
)
def test_bad_options(run, tmp_path, args, expected):
    files = write_days(tmp_path, days=1, rows=20)
    out = tmp_path / "out"
    assert_failed_cleanly(run("--input", *files, "--out", out, *args), out, expected)


def test_prefetch_reraises_and_stops_its_thread():
    from recfunnel.data.sources.ctr_common import prefetch

    def items():
        yield from range(3)
        raise ValueError("boom")

    got = []
    with pytest.raises(ValueError, match="boom"):
        for item in prefetch(items()):
            got.append(item)
    assert got == [0, 1, 2]
    closed = []

    def endless():
        try:
            yield from iter(int, 1)
        finally:
            closed.append(True)

    stream = prefetch(endless())
    assert next(stream) == 0
    stream.close()  # the consumer stops early: the producer ends and closes its source
    assert closed == [True]


def test_gzipped_days_are_read_as_they_are(run, tmp_path, small_blocks):
    import gzip

    plain = write_days(tmp_path, days=1, rows=600)[0]
    zipped = tmp_path / "day_0.gz"
    zipped.write_bytes(gzip.compress(plain.read_bytes()))
    assert run("--input", plain, "--out", tmp_path / "plain", "--quiet")[0] == 0
    assert run("--input", zipped, "--out", tmp_path / "zipped", "--quiet")[0] == 0
    a, b = read_split(tmp_path / "plain", "train")[1], read_split(tmp_path / "zipped", "train")[1]
    assert np.array_equal(a.sparse, b.sparse) and np.array_equal(a.dense, b.dense)
    record = load_manifest(tmp_path / "zipped").source["files"][0]
    assert record["gzip"] and record["rows"] == 600 and "partial" not in record
    assert not list(tmp_path.glob("day_0.gz.*")) and not list(tmp_path.glob("*.tsv"))  # never unpacked to disk
    zipped.write_bytes(zipped.read_bytes()[:2000])  # cut short
    assert_failed_cleanly(run("--input", zipped, "--out", tmp_path / "cut"), tmp_path / "cut", "day_0.gz: damaged gzip")


@pytest.mark.parametrize("damage", ["binary", "utf8"])
def test_bytes_that_are_not_text_are_one_line_with_line_and_offset(run, tmp_path, damage):
    path = write_days(tmp_path, days=1, rows=600)[0]
    data = path.read_bytes()
    if damage == "binary":
        data = bytes(np.random.default_rng(1).integers(0, 256, 20_000, dtype=np.uint8))
        where = "line 1"
    else:
        offset = data.index(b"\n", len(data) // 2) + 5
        data = data[:offset] + b"\xff" + data[offset + 1 :]
        newlines = data[:offset].count(b"\n")
        where = f"line {newlines + 1} (byte {offset:,})"
    path.write_bytes(data)
    message = assert_failed_cleanly(run("--input", path, "--out", tmp_path / "out"), tmp_path / "out", "day_0")
    assert where in message and "not utf-8 text" in message
