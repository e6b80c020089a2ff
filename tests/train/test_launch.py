"""Launchers: the options each process must not see again, and `recfunnel train` on two ranks
through Spark's TorchDistributor (local_mode False and True)."""

import json
import math
import os
import socket
import subprocess
import sys
import time

import pytest

from recfunnel.errors import RecfunnelError
from recfunnel.train import spark_launch
from recfunnel.train.launch import without_launcher

UNCLOSED_PIPE = "ignore:unclosed file <_io.BufferedReader:ResourceWarning"
OVERRIDES = ["train.epochs=1", "train.batch_size=256", "eval.baselines=false"]


@pytest.mark.parametrize(
    "argv, kept",
    [
        (["--launcher", "torchrun", "--nproc=4"], []),
        (["--launcher=spark", "--num-processes", "2", "--spark-master", "local[2]", "--local-mode"], []),
        (["--num-processes=2", "--spark-master=spark://h:7077", "--no-local-mode"], []),
        (["--set", "train.epochs=1", "--launcher", "spark", "--quiet"], ["--set", "train.epochs=1", "--quiet"]),
    ],
)
def test_launcher_options_are_dropped_and_the_rest_kept_in_order(argv, kept):
    assert without_launcher(["train", "--model", "dlrm", *argv, "--out", "r"]) == [
        "train",
        "--model",
        "dlrm",
        *kept,
        "--out",
        "r",
    ]


def test_the_spark_launcher_does_not_import_pyspark_until_it_runs():
    code = (
        "import sys, recfunnel.cli, recfunnel.train.spark_launch; "
        "print(any(m.startswith('pyspark') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_fewer_than_one_process_is_refused():
    with pytest.raises(RecfunnelError, match="--num-processes: expected an integer >= 1, got 0"):
        spark_launch.run_spark({}, num_processes=0)


class _Session:
    def __init__(self, **conf):
        self.conf = self
        self._conf = conf

    def get(self, key, default=None):
        return self._conf.get(key, default)


@pytest.mark.parametrize(
    "master, task_cpus, ok",
    [
        ("local[2]", "1", True),
        ("local[1]", "1", False),
        ("local[4]", "2", True),
        ("local[2,3]", "2", False),
        ("local", "1", False),
        ("spark://host:7077", "1", True),  # a cluster's slots are not known here
    ],
)
def test_a_local_master_needs_a_task_slot_per_process(master, task_cpus, ok):
    session = _Session(**{"spark.master": master, "spark.task.cpus": task_cpus})
    if ok:
        spark_launch._check_slots(session, 2)
    else:
        with pytest.raises(RecfunnelError, match=r"--num-processes 2: Spark master local.* each process needs one"):
            spark_launch._check_slots(session, 2)


def test_gpus_need_spark_to_hand_them_out():
    with pytest.raises(RecfunnelError, match="spark.task.resource.gpu.amount >= 1"):
        spark_launch._check_gpus(_Session(), local_mode=False)
    with pytest.raises(RecfunnelError, match="spark.driver.resource.gpu.amount >= 1"):
        spark_launch._check_gpus(_Session(), local_mode=True)
    spark_launch._check_gpus(_Session(**{"spark.task.resource.gpu.amount": "1"}), local_mode=False)


def test_another_master_than_the_active_sessions_is_refused(monkeypatch):
    from pyspark.sql import SparkSession

    active = _Session(**{"spark.master": "local[2]"})
    monkeypatch.setattr(SparkSession, "getActiveSession", staticmethod(lambda: active))
    assert spark_launch._session(None, 2)[1] is False  # used, and not ours to stop
    assert spark_launch._session("local[2]", 2)[1] is False
    with pytest.raises(RecfunnelError, match=r"--spark-master local\[4\]: .* session on local\[2\]"):
        spark_launch._session("local[4]", 2)


@pytest.fixture
def world(monkeypatch):
    """Rank 1 of 2 as one Spark task's torchrun sees it (local_mode=False); ``exchanged`` = what
    the other ranks say, or None if no exchange may happen."""
    for key, value in {
        "RANK": "1",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "0",
        "LOCAL_WORLD_SIZE": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }.items():
        monkeypatch.setenv(key, value)
    peers = {"value": None}

    def exchange(mine):
        assert peers["value"] is not None, "no exchange expected"
        return [json.dumps(p) for p in peers["value"]] + [mine]

    monkeypatch.setattr(spark_launch, "_exchange", exchange)
    monkeypatch.setattr(spark_launch.socket, "gethostname", lambda: "a")
    return peers


def test_ranks_on_one_host_become_local_ranks_of_one_node(world):
    world["value"] = [["a", ""]]
    spark_launch._one_host()
    assert [os.environ[k] for k in ("LOCAL_RANK", "LOCAL_WORLD_SIZE", "CUDA_VISIBLE_DEVICES")] == ["1", "2", ""]


def test_ranks_on_several_hosts_keep_what_torchrun_said(world):
    world["value"] = [["b", ""]]
    spark_launch._one_host()
    assert (os.environ["LOCAL_RANK"], os.environ["LOCAL_WORLD_SIZE"]) == ("0", "1")


def test_each_tasks_own_gpu_becomes_cuda_rank(world, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")  # this task's GPU; rank 0's is GPU 3
    world["value"] = [["a", "3"]]
    spark_launch._one_host()
    assert (os.environ["LOCAL_RANK"], os.environ["CUDA_VISIBLE_DEVICES"]) == ("1", "3,5")


def test_one_torchrun_for_every_rank_needs_no_exchange(world, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    spark_launch._one_host()  # world["value"] is None: an exchange would fail
    assert os.environ["LOCAL_RANK"] == "1"


EXCHANGE = """
import os
from recfunnel.train.spark_launch import _one_host
_one_host()
print(os.environ["RANK"], os.environ["LOCAL_RANK"], os.environ["LOCAL_WORLD_SIZE"], os.environ["CUDA_VISIBLE_DEVICES"],
      flush=True)
"""


@pytest.mark.slow
def test_two_single_process_torchruns_on_this_host_find_each_other(tmp_path):
    """What a Spark task runs under local_mode=False: its own torchrun, one node of a static rendezvous."""
    script = tmp_path / "rank.py"
    script.write_text(EXCHANGE)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                f"--node_rank={node}",
                f"--rdzv_endpoint=127.0.0.1:{port}",
                "--rdzv_id=t",
                "--nproc_per_node=1",
                str(script),
            ],
            env={**os.environ, "CUDA_VISIBLE_DEVICES": str(7 - node)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in (0, 1)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    lines = sorted(out.strip().splitlines()[-1] for out, _ in outs)
    assert lines == [f"{r} {r} 2 7,6" for r in (0, 1)]


# -- end to end: two ranks train a tiny ranker ------------------------------------------------------


@pytest.fixture(scope="module")
def ctr(tmp_path_factory):
    from recfunnel.cli import main

    data = tmp_path_factory.mktemp("data") / "ctr"
    assert (
        main(
            [
                "prepare",
                "synthetic",
                "--rows",
                "4000",
                "--sparse",
                "4",
                "--multi-hot",
                "1",
                "--dense",
                "3",
                "--interactions",
                "2",
                "--block-rows",
                "256",
                "--out",
                str(data),
                "--quiet",
            ]
        )
        == 0
    )
    return data


def _no_spark_left():
    from pyspark.sql import SparkSession

    return SparkSession.getActiveSession() is None


@pytest.mark.slow
@pytest.mark.parametrize(
    "local_mode",
    [
        pytest.param(False, id="spark-tasks"),
        # TorchDistributor leaves the pipe of its torchrun child unclosed (in the driver: local_mode)
        pytest.param(True, id="driver", marks=pytest.mark.filterwarnings(UNCLOSED_PIPE)),
    ],
)
def test_two_ranks_train_through_torch_distributor(ctr, tmp_path, capsys, local_mode):
    run = tmp_path / "run"
    train_args = {"model_kind": "dlrm", "data": str(ctr), "out": str(run), "overrides": OVERRIDES}
    start = time.perf_counter()
    assert spark_launch.run_spark(train_args, num_processes=2, local_mode=local_mode, use_gpu=False) == 0
    seconds = time.perf_counter() - start
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["world_size"] == 2
    assert math.isfinite(metrics["test"]["auc"]) and 0 < metrics["test"]["auc"] < 1
    # Spark's workers saw this process's environment (they were started after conftest set it)
    assert json.loads((run / "mlflow.json").read_text())["tracking_uri"] == os.environ["MLFLOW_TRACKING_URI"]
    # the ranks' output reaches the driver: stdout (local_mode) or stderr (Spark's log streaming)
    out = capsys.readouterr()
    assert f"run folder: {run}" in (out.out if local_mode else out.err)
    assert _no_spark_left()
    print(f"{'local_mode' if local_mode else 'spark tasks'}: {seconds:.1f} s")  # shown with -rP


@pytest.mark.slow
def test_a_user_mistake_in_the_ranks_is_one_line_and_an_exit_code(tmp_path, capsys):
    train_args = {
        "model_kind": "dlrm",
        "data": str(tmp_path / "nothing"),
        "out": str(tmp_path / "run"),
        "overrides": OVERRIDES,
    }
    assert spark_launch.run_spark(train_args, num_processes=2, use_gpu=False) == 2
    err = capsys.readouterr().err
    assert err.count("recfunnel: error:") == 1 and "no manifest" in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()
    assert _no_spark_left()
