"""Output appears whole or not at all; what a killed process left is cleaned up by the next run that
writes the same output, and nothing a live process (or another host) owns is touched."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from recfunnel.errors import DataError
from recfunnel.files import _HOST, atomic_output_dir, check_writable, remove_dead_leftovers


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid  # gone (pids are not reused this quickly)


def test_leftovers_of_dead_processes_go_and_live_ones_stay(tmp_path, capsys):
    out = tmp_path / "data"
    dead = tmp_path / f".data.tmp-{_HOST}-{_dead_pid()}-0123abcd"
    live = tmp_path / f".data.tmp-{_HOST}-{os.getpid()}-0123abcd"
    elsewhere = tmp_path / f".data.tmp-otherhost-{_dead_pid()}-0123abcd"
    for folder in (dead, live, elsewhere):
        folder.mkdir()
        (folder / "part").write_bytes(b"x" * 1000)
    with atomic_output_dir(out) as tmp:
        (tmp / "manifest.json").write_text("{}")
    err = capsys.readouterr().err
    assert not dead.exists() and live.exists() and elsewhere.exists() and (out / "manifest.json").is_file()
    assert err.count("\n") == 1 and f"removed {dead}" in err and "which is gone" in err
    assert remove_dead_leftovers(out) == []


def test_a_failed_write_leaves_nothing_and_keeps_the_old_folder(tmp_path):
    out = tmp_path / "data"
    with atomic_output_dir(out) as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(RuntimeError), atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "v").write_text("2")
        raise RuntimeError("half-way")
    assert (out / "v").read_text() == "1" and [p.name for p in tmp_path.iterdir()] == ["data"]


def test_replacing_a_folder_never_leaves_a_moment_without_it(tmp_path):
    out = tmp_path / "model"
    with atomic_output_dir(out) as tmp:
        (tmp / "model.pt").write_text("0")
    missing, stop = [], threading.Event()

    def reader() -> None:
        while not stop.is_set():
            if not (out / "model.pt").exists():
                missing.append(time.perf_counter())

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for version in range(1, 101):
            with atomic_output_dir(out, overwrite=True) as tmp:
                (tmp / "model.pt").write_text(str(version))
    finally:
        stop.set()
        thread.join()
    assert not missing and (out / "model.pt").read_text() == "100"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_an_unwritable_output_is_one_line_before_any_work(tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(DataError, match=r"afile/out: cannot write there \(.*afile is a file, not a folder\)"):
        check_writable(tmp_path / "afile" / "out")
    with pytest.raises(DataError, match="cannot write there"):
        with atomic_output_dir(tmp_path / "afile" / "out"):
            pass


def test_an_unwritable_out_fails_prepare_in_one_line(cli, tmp_path):
    (tmp_path / "afile").write_text("")
    code, _, err = cli("prepare", "synthetic", "--rows", "2000", "--out", tmp_path / "afile" / "data", "--quiet")
    assert code == 2 and err.count("\n") == 1 and "cannot write there" in err


@pytest.mark.slow
def test_a_killed_prepare_is_cleaned_up_by_the_next_one(tmp_path):
    out = tmp_path / "big"
    command = [
        sys.executable,
        "-m",
        "recfunnel.cli",
        "prepare",
        "synthetic",
        "--rows",
        "3000000",
        "--out",
        str(out),
        "--quiet",
    ]
    child = subprocess.Popen(command)
    deadline = time.monotonic() + 120
    while not any(p.is_dir() and any(p.rglob("*.mds")) for p in tmp_path.glob(".big.tmp-*")):
        assert child.poll() is None and time.monotonic() < deadline, "prepare ended before writing shards"
        time.sleep(0.1)
    child.send_signal(signal.SIGKILL)
    child.wait()
    left = list(tmp_path.glob(".big.tmp-*"))
    assert len(left) == 1 and not out.exists()
    done = subprocess.run([*command[:6], "2000", *command[7:]], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"removed {left[0]}" in done.stderr and f"left by process {child.pid}, which is gone" in done.stderr
    assert not left[0].exists() and (out / "manifest.json").is_file()


def test_a_text_file_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    from pathlib import Path

    from recfunnel.files import write_text_atomic

    target = tmp_path / "sharding_plan.txt"
    write_text_atomic(target, "old\n")

    def disk_full(self, *args, **kwargs):
        Path.write_bytes(self, b"ha")  # part of it written, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError):
        write_text_atomic(target, "new\n")
    monkeypatch.undo()
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["sharding_plan.txt"]
