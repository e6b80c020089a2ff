"""Hostile input, generated: seeded mutations of valid CSV, TSV, gzip, Parquet and Criteo files fed to
`recfunnel prepare`. Every outcome is a finished dataset (exit 0) or one line `recfunnel: error: ...`
(exit 2): never a traceback, never partial output. A failure names its case number; FUZZ_SEED picks
another family of cases, FUZZ_CASES how many the quick test runs."""

import gzip
import os
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recfunnel.cli import main
from recfunnel.data.format.manifest import load_manifest

QUICK_CASES = int(os.environ.get("FUZZ_CASES", 300))
LONG_CASES = 3000
NASTY = [
    "",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "-1",
    "-0",
    "0",
    "1.5",
    "1e300",
    "1e19",
    str(2**63),
    str(2**64 + 7),
    "abc",
    '"',
    '""',
    "1,2",
    "\t",
    " ",
    "\x00",
    "é",
    "\U0001d518",
    "0x1f",
    "True",
    "None",
    "null",
    "2024-02-30",
    "1970-01-01T00:00:00Z",
    "9" * 40,
    "\\",
    "'",
    "\r",
]


def _interactions(rng: random.Random, rows: int = 60) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "user_id": [rng.randint(1, 12) for _ in range(rows)],
            "item_id": [rng.randint(1, 20) for _ in range(rows)],
            "rating": [rng.randint(1, 5) for _ in range(rows)],
            "timestamp": [1_000_000 + i for i in range(rows)],
        }
    )
    if rng.random() < 0.5:
        frame["device"] = [rng.choice(["ios", "web", "android"]) for _ in range(rows)]
    if rng.random() < 0.3:
        frame["price"] = [round(rng.uniform(1, 9), 2) for _ in range(rows)]
    return frame


def _criteo(rng: random.Random, rows: int = 60) -> bytes:
    lines = []
    for _ in range(rows):
        fields = [str(rng.randint(0, 1))] + [str(rng.randint(0, 30)) if rng.random() > 0.1 else "" for _ in range(13)]
        fields += [f"{rng.randint(0, 40):08x}" if rng.random() > 0.1 else "" for _ in range(26)]
        lines.append("\t".join(fields))
    return ("\n".join(lines) + "\n").encode()


def _mutate_text(rng: random.Random, data: bytes, sep: bytes) -> bytes:
    lines = data.split(b"\n")
    kind = rng.randrange(12)
    if kind == 0:  # flip bytes
        data = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if kind == 1:  # cut short
        return data[: rng.randrange(len(data))]
    if kind == 2:  # a line deleted, repeated or moved
        i = rng.randrange(len(lines))
        j = rng.randrange(len(lines))
        lines.insert(j, lines.pop(i) if rng.random() < 0.5 else lines[i])
    elif kind in (3, 4, 5):  # a field replaced by something nasty
        i = rng.randrange(len(lines))
        fields = lines[i].split(sep)
        fields[rng.randrange(len(fields))] = rng.choice(NASTY).encode("utf-8", "surrogatepass")
        lines[i] = sep.join(fields)
    elif kind == 6:  # a field too many or too few
        i = rng.randrange(len(lines))
        fields = lines[i].split(sep)
        fields = fields[:-1] if rng.random() < 0.5 and len(fields) > 1 else fields + [b"7"]
        lines[i] = sep.join(fields)
    elif kind == 7:  # the header: a name repeated, mangled or dropped
        fields = lines[0].split(sep)
        j = rng.randrange(len(fields))
        fields[j] = rng.choice([fields[rng.randrange(len(fields))], b"", b"user id", b"\xff", b"rating"])
        lines[0] = sep.join(fields)
    elif kind == 8:  # a byte-order mark or Windows line ends
        return (b"\xef\xbb\xbf" + data) if rng.random() < 0.5 else data.replace(b"\n", b"\r\n")
    elif kind == 9:  # the other delimiter on some lines
        other = b";" if sep != b";" else b","
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(lines))
            lines[i] = lines[i].replace(sep, other)
    elif kind == 10:  # binary garbage
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 3000)))
    else:  # empty, or only a header
        return b"" if rng.random() < 0.3 else lines[0] + b"\n"
    return b"\n".join(lines)


def _maybe_gzip(rng: random.Random, data: bytes) -> tuple[bytes, bool]:
    if rng.random() < 0.8:
        return data, False
    packed = gzip.compress(data)
    return (packed[: rng.randrange(len(packed))] if rng.random() < 0.3 else packed), True


def _parquet_case(rng: random.Random, path: Path) -> None:
    frame = _interactions(rng)
    kind = rng.randrange(7)
    if kind == 0:
        frame["user_id"] = frame["user_id"].astype(str)
    elif kind == 1:
        frame.loc[rng.randrange(len(frame)), "rating"] = np.nan
    elif kind == 2:
        frame["item_id"] = frame["item_id"].astype(float) + (0.5 if rng.random() < 0.5 else 0.0)
    elif kind == 3:  # two columns of one name
        table = pa.table(
            [frame["user_id"], frame["item_id"], frame["rating"], frame["rating"]],
            names=["user_id", "item_id", "rating", "rating"],
        )
        pq.write_table(table, path)
        return
    elif kind == 4:
        frame["user_id"] = pd.Series([2**63 + i for i in range(len(frame))], dtype="uint64")
    elif kind == 5:
        frame["timestamp"] = pd.to_datetime(frame["timestamp"], unit="s")
    frame.to_parquet(path)
    if kind == 6:  # then damaged on disk
        data = bytearray(path.read_bytes())
        for _ in range(rng.randint(1, 16)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        path.write_bytes(bytes(data[: rng.randrange(len(data) // 2, len(data) + 1)]))


def _case(n: int, tmp: Path) -> tuple[list[str], Path, str]:
    """The command line of case ``n``, its output folder, and what the case is."""
    rng = random.Random(int(os.environ.get("FUZZ_SEED", 0)) * 1_000_003 + n)
    out = tmp / f"out-{n}"
    family = rng.choice(["csv", "csv", "tsv", "parquet", "criteo", "criteo"])
    if family == "parquet":
        path = tmp / f"in-{n}.parquet"
        _parquet_case(rng, path)
        return ["prepare", "interactions", "--input", str(path)], out, family
    if family == "criteo":
        data, zipped = _maybe_gzip(rng, _mutate_text(rng, _criteo(rng), b"\t"))
        path = tmp / f"day-{n}{'.gz' if zipped else ''}"
        path.write_bytes(data)
        return ["prepare", "criteo", "--input", str(path), "--min-count", "1"], out, family
    sep = "," if family == "csv" else "\t"
    text = _interactions(rng).to_csv(index=False, sep=sep).encode()
    data, zipped = _maybe_gzip(rng, _mutate_text(rng, text, sep.encode()))
    path = tmp / f"in-{n}.{family}{'.gz' if zipped else ''}"
    path.write_bytes(data)
    extra = rng.choice([[], ["--split", "temporal"], ["--split", "time"], ["--label", "user-mean"], ["--label", "all"]])
    return ["prepare", "interactions", "--input", str(path), *extra], out, family


def _run_cases(cases: range, tmp_path: Path, capsys: pytest.CaptureFixture) -> dict[str, int]:
    outcomes = {"ok": 0, "refused": 0}
    for n in cases:
        argv, out, family = _case(n, tmp_path)
        try:
            code = main([*argv, "--out", str(out), "--quiet", "--block-rows", "16"])
        except BaseException as e:  # what a user would have seen as a traceback
            raise AssertionError(f"case {n} ({family}): {argv} raised {type(e).__name__}: {e}") from e
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        leftovers = [p.name for p in tmp_path.glob(f".{out.name}.*")]
        assert not leftovers, f"case {n} ({family}) left {leftovers}"
        if code == 0:
            assert load_manifest(out).splits, f"case {n} ({family}): exit 0 without a dataset"
            outcomes["ok"] += 1
        else:
            assert code == 2 and len(lines) == 1 and lines[0].startswith("recfunnel: error: "), (
                f"case {n} ({family}) {argv}: exit {code}, stderr {err!r}"
            )
            assert "Traceback" not in err and not out.exists(), f"case {n} ({family}): partial output or traceback"
            outcomes["refused"] += 1
    return outcomes


def test_mutated_inputs_never_crash(tmp_path, capsys):
    outcomes = _run_cases(range(QUICK_CASES), tmp_path, capsys)
    assert outcomes["ok"] > QUICK_CASES // 20 and outcomes["refused"] > QUICK_CASES // 4  # both kinds exercised


@pytest.mark.slow
def test_many_more_mutated_inputs_never_crash(tmp_path, capsys):
    outcomes = _run_cases(range(QUICK_CASES, QUICK_CASES + LONG_CASES), tmp_path, capsys)
    assert outcomes["ok"] and outcomes["refused"]
