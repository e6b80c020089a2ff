"""Scale-out: 2 processes train the same model as 1, a SIGKILLed run resumes to the same result,
and checkpoints move between world sizes. Every run here is a real `recfunnel train` process."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

QUICK = ["--quiet", "--set", "eval.baselines=false", "--set", "train.log_every=5"]


def train(data: Path, out: Path, *args: str, model: str = "dlrm") -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "recfunnel.cli",
        "train",
        "--model",
        model,
        "--data",
        str(data),
        "--out",
        str(out),
        *QUICK,
        *args,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def checkpoint_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a distributed checkpoint, whole (whatever sharding wrote it)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(str(path), str(path.parent / "whole.pt"))
    state = torch.load(path.parent / "whole.pt", weights_only=False)
    (path.parent / "whole.pt").unlink()
    out = {}
    for group, values in state.items():
        for key, value in values.items() if isinstance(values, dict) else []:
            if isinstance(value, torch.Tensor):
                out[f"{group}.{key}"] = value
            elif isinstance(value, dict):  # optimizer state per parameter
                out.update({f"{group}.{key}.{k}": v for k, v in value.items() if isinstance(v, torch.Tensor)})
    return out


def latest(run: Path) -> Path:
    return run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()


@pytest.fixture(scope="module")
def blocks256(tmp_path_factory):
    """Blocks of 256 rows: with one block per shuffle window, a 2-process step of 256 rows per rank
    reads the same two blocks as a 1-process step of 512 rows."""
    from recfunnel.cli import main

    out = tmp_path_factory.mktemp("data") / "ctr"
    assert (
        main(
            [
                "prepare",
                "synthetic",
                "--rows",
                "6000",
                "--sparse",
                "6",
                "--multi-hot",
                "1",
                "--dense",
                "3",
                "--interactions",
                "2",
                "--block-rows",
                "256",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    return out


# SGD, not Adam or Adagrad: their first steps are nearly sign(gradient), which would hide a wrong
# gradient scale. No dropout: its masks come from each rank's own generator.
SAME_STEPS = [
    "--set",
    "train.max_steps=3",
    "--set",
    "train.epochs=1",
    "--set",
    "train.window_blocks=1",
    "--set",
    "model.dropout=0",
    "--set",
    "train.dense_optimizer.name=sgd",
    "--set",
    "train.dense_optimizer.lr=0.5",
    "--set",
    "train.embedding_optimizer.name=sgd",
    "--set",
    "train.embedding_optimizer.lr=5",
]


@pytest.mark.parametrize(
    "launcher",
    [["--launcher", "torchrun", "--nproc", "2"], ["--launcher", "spark", "--num-processes", "2", "--no-local-mode"]],
    ids=["torchrun", "spark"],
)
def test_two_processes_train_the_same_parameters_as_one(blocks256, tmp_path, launcher):
    train(blocks256, tmp_path / "one", *SAME_STEPS, "--set", "train.batch_size=512")
    train(blocks256, tmp_path / "two", *SAME_STEPS, "--set", "train.batch_size=256", *launcher)
    one, two = checkpoint_tensors(latest(tmp_path / "one")), checkpoint_tensors(latest(tmp_path / "two"))
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["train"]["world_size"] == 2
    assert one.keys() == two.keys()
    worst = max((one[k].float() - two[k].float()).abs().max().item() for k in one)
    assert worst <= 1e-5, f"largest difference {worst}"
    # ... and the three steps did move the weights (from the seeded initial ones)
    from recfunnel.config import load_config
    from recfunnel.data.format.manifest import load_manifest
    from recfunnel.store.model import build_model

    torch.manual_seed(42)
    initial = build_model(load_config("dlrm"), load_manifest(blocks256), device="meta").state_dict()
    assert (one["model.over_arch.model.1.weight"] - initial["over_arch.model.1.weight"]).abs().max() > 1e-3


def kill_mid_epoch(cmd: list[str], run: Path, after_step: int) -> int:
    """Start ``cmd``, SIGKILL it (and its children) once a checkpoint past ``after_step`` exists."""
    log = run.parent / "killed.log"
    shm_before = set(os.listdir("/dev/shm"))
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            pointer = run / "checkpoints" / "latest"
            if pointer.exists() and int(pointer.read_text().strip().split("-")[1]) >= after_step:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                # a killed run cannot free streaming's shared memory: do it for it (tests after this
                # one count segments)
                for name in set(os.listdir("/dev/shm")) - shm_before:
                    if name[:6].isdigit():
                        Path("/dev/shm", name).unlink(missing_ok=True)
                return int(pointer.read_text().strip().split("-")[1])
            time.sleep(0.02)
        raise AssertionError(f"the run ended before step {after_step}: {log.read_text()[-2000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.parametrize("model, data_kind", [("dlrm", "ctr"), ("two-tower", "pairs")])
def test_a_sigkilled_run_resumes_to_the_same_result(tmp_path, model, data_kind):
    from recfunnel.cli import main

    data = tmp_path / data_kind
    extra = (
        ["--kind", "interactions"] if data_kind == "pairs" else ["--sparse", "6", "--dense", "3", "--interactions", "2"]
    )
    assert (
        main(["prepare", "synthetic", "--rows", "8000", *extra, "--block-rows", "512", "--out", str(data), "--quiet"])
        == 0
    )
    args = ["--set", "train.epochs=2", "--set", "train.batch_size=64", "--set", "train.checkpoint_every=4"]
    train(data, tmp_path / "whole", *args, model=model)
    cmd = [
        sys.executable,
        "-m",
        "recfunnel.cli",
        "train",
        "--model",
        model,
        "--data",
        str(data),
        "--out",
        str(tmp_path / "killed"),
        *QUICK,
        *args,
    ]
    killed_at = kill_mid_epoch(cmd, tmp_path / "killed", after_step=12)
    assert not (tmp_path / "killed" / "metrics.json").exists()
    train(data, tmp_path / "killed", "--resume", model=model)

    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    resumed = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    steps_per_epoch = whole["train"]["steps"] // 2
    assert resumed["train"]["resumed_from_step"] == killed_at and killed_at % steps_per_epoch != 0  # mid-epoch
    # Sample accounting: each epoch saw every training row once, in both runs.
    assert resumed["train"]["epochs"] == whole["train"]["epochs"]
    assert [e["rows"] for e in whole["train"]["epochs"]] == [whole["train"]["train_rows"]] * 2
    # Same trajectory: stated tolerance 1e-6 on every test metric (in practice the runs are identical).
    assert resumed["train"]["steps"] == whole["train"]["steps"]
    for name, value in whole["test"].items():
        assert resumed["test"][name] == pytest.approx(value, abs=1e-6), name


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)])
def test_a_checkpoint_resumes_on_another_number_of_processes(blocks256, tmp_path, before, after):
    def launch(n):
        return ["--launcher", "torchrun", "--nproc", str(n)] if n > 1 else []

    run = tmp_path / "run"
    train(
        blocks256,
        run,
        "--set",
        "train.epochs=2",
        "--set",
        "train.batch_size=128",
        "--set",
        "train.checkpoint_every=5",
        "--set",
        "train.max_steps=5",
        *launch(before),
    )
    assert json.loads((run / "metrics.json").read_text())["train"]["world_size"] == before
    (run / "metrics.json").unlink()  # as if it had been stopped there
    train(blocks256, run, "--resume", "--set", "train.max_steps=0", *launch(after))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["world_size"] == after and metrics["train"]["resumed_from_step"] == 5
    # Every row seen once per epoch across the two world sizes, the same rows as a whole epoch.
    first, second = metrics["train"]["epochs"]
    assert first["rows"] == second["rows"] == metrics["train"]["train_rows"]
    assert first["checksum"] == second["checksum"]
    assert 0.5 < metrics["test"]["auc"] <= 1


def test_a_scheduler_rerunning_the_same_command_after_kills_ends_like_an_uninterrupted_run(tmp_path):
    """What Databricks jobs or Kubernetes do after a preemption: run the same command again. SIGKILLed
    at 10 random moments (before the first checkpoint, mid-epoch, while saving), the run ends with the
    metrics of an uninterrupted one, every row seen once per epoch."""
    import random

    from recfunnel.cli import main

    data = tmp_path / "ctr"
    extra = ["--sparse", "6", "--dense", "3", "--interactions", "2", "--block-rows", "512"]
    assert main(["prepare", "synthetic", "--rows", "8000", *extra, "--out", str(data), "--quiet"]) == 0
    args = ["--set", "train.epochs=2", "--set", "train.batch_size=64", "--set", "train.checkpoint_every=4"]
    train(data, tmp_path / "whole", *args)
    run = tmp_path / "retried"
    cmd = [
        sys.executable,
        "-m",
        "recfunnel.cli",
        "train",
        "--model",
        "dlrm",
        "--data",
        str(data),
        "--out",
        str(run),
        "--resume",
        *QUICK,
        *args,
    ]
    rng, shm_before, kills, after_checkpoint = random.Random(7), set(os.listdir("/dev/shm")), 0, 0
    pointer = run / "checkpoints" / "latest"

    def step_saved() -> str:
        return pointer.read_text() if pointer.exists() else ""

    while True:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        if kills == 10:  # the scheduler's last try is left alone
            _, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err.decode()[-2000:]
            break
        # half the kills at a random moment of start-up or training, half just after the next
        # checkpoint is complete (sometimes while the one after it is being written)
        seen, deadline = step_saved(), time.monotonic() + (rng.uniform(0.5, 6.0) if kills % 2 else 300)
        while proc.poll() is None and time.monotonic() < deadline and (kills % 2 or step_saved() == seen):
            time.sleep(0.01)
        time.sleep(0 if kills % 2 else rng.uniform(0.0, 0.3))
        assert proc.poll() is None, f"the run ended before kill {kills + 1}: {proc.communicate()[1].decode()[-2000:]}"
        after_checkpoint += pointer.exists()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        kills += 1
        for name in set(os.listdir("/dev/shm")) - shm_before:  # what a killed run could not free
            if name[:6].isdigit():
                Path("/dev/shm", name).unlink(missing_ok=True)
    assert kills == 10 and after_checkpoint >= 5, (kills, after_checkpoint)
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    retried = json.loads((run / "metrics.json").read_text())
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    assert retried["train"]["epochs"] == whole["train"]["epochs"]  # rows and their checksum, per epoch
    assert [e["rows"] for e in retried["train"]["epochs"]] == [whole["train"]["train_rows"]] * 2
    assert retried["train"]["steps"] == whole["train"]["steps"]
    for name, value in whole["test"].items():
        assert retried["test"][name] == pytest.approx(value, abs=1e-6), name
