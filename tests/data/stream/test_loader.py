import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from recfunnel.data.stream.loader import StreamingBatchLoader
from recfunnel.errors import DataError
from tests.data.fixtures import split_row_keys, write_tiny_dataset

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("loader") / "tiny"
    write_tiny_dataset(out, {"train": 3000, "test": 700}, block_rows=64)
    return out


def epoch_ids(loader) -> list[np.ndarray]:
    """Row ids (dense column 0) of the real rows of each batch of one epoch."""
    return [b.dense[:, 0].numpy()[b.weights.numpy() > 0].astype(np.int64) for b in loader]


@pytest.mark.parametrize("workers", [0, 2])
def test_one_epoch_yields_every_row_once(tiny, workers):
    loader = StreamingBatchLoader(tiny, "train", batch_size=128, num_workers=workers, window_blocks=4)
    batches = epoch_ids(loader)
    ids = np.concatenate(batches)
    assert sorted(ids.tolist()) == list(range(3000))
    assert len(batches) == len(loader)


def test_batches_carry_consistent_features(tiny):
    batch = next(iter(StreamingBatchLoader(tiny, "train", batch_size=256)))
    row_id = batch.dense[:, 0].long()
    kjt = batch.sparse
    assert kjt.keys() == ["row", "small", "tags"]
    assert torch.equal(kjt["row"].values(), row_id + 1)  # fixture: sparse "row" = id + 1
    assert kjt["small"].lengths().eq(1).all()
    # multi-hot "tags": every id of row i is (i % 50) + 1
    expected = torch.repeat_interleave((row_id % 50) + 1, kjt["tags"].lengths().long())
    assert torch.equal(kjt["tags"].values(), expected)
    assert batch.labels.shape == (256, 1) and batch.dense.dtype == torch.float32


def test_shuffle_is_seeded_and_changes_each_epoch(tiny):
    a = StreamingBatchLoader(tiny, "train", batch_size=500, seed=1)
    first, second = np.concatenate(epoch_ids(a)), np.concatenate(epoch_ids(a))
    again = np.concatenate(epoch_ids(StreamingBatchLoader(tiny, "train", batch_size=500, seed=1)))
    other = np.concatenate(epoch_ids(StreamingBatchLoader(tiny, "train", batch_size=500, seed=2)))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, second) and sorted(first) == sorted(second)
    assert not np.array_equal(first, other)
    # Rows of a batch come from all over the split, not from one block (64 rows here).
    spread = np.diff(np.sort(first[:500]))
    assert first[:500].max() - first[:500].min() > 2000 and spread.max() < 200


def test_unshuffled_keeps_block_order(tiny):
    ids = np.concatenate(epoch_ids(StreamingBatchLoader(tiny, "test", batch_size=100, shuffle=False)))
    again = np.concatenate(epoch_ids(StreamingBatchLoader(tiny, "test", batch_size=100, shuffle=False)))
    assert np.array_equal(ids, again) and sorted(ids.tolist()) == list(range(3000, 3700))


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("stop_after", [1, 7, 20])
def test_resume_mid_epoch_is_exact(tiny, workers, stop_after):
    kw = dict(batch_size=96, num_workers=workers, window_blocks=3, seed=5)
    whole = epoch_ids(StreamingBatchLoader(tiny, "train", **kw))
    first = StreamingBatchLoader(tiny, "train", **kw)
    head = []
    for batch in first:
        head.append(batch.dense[:, 0].numpy()[batch.weights.numpy() > 0].astype(np.int64))
        if len(head) == stop_after:
            break
    state = json.loads(json.dumps(first.state_dict()))  # survives serialisation
    resumed = StreamingBatchLoader(tiny, "train", **kw)
    resumed.load_state_dict(state)
    tail = epoch_ids(resumed)
    assert len(head) + len(tail) == len(whole)
    for got, want in zip(head + tail, whole):
        assert np.array_equal(got, want)
    # ... and the next epoch goes on as in an uninterrupted run.
    uninterrupted = StreamingBatchLoader(tiny, "train", **kw)
    epoch_ids(uninterrupted)
    assert np.array_equal(np.concatenate(epoch_ids(resumed)), np.concatenate(epoch_ids(uninterrupted)))


def head_ids(loader, batches: int) -> list[np.ndarray]:
    out = []
    for batch in loader:
        out.append(batch.dense[:, 0].numpy()[batch.weights.numpy() > 0].astype(np.int64))
        if len(out) == batches:
            break
    return out


@pytest.mark.parametrize(
    "saved, resumed",
    [
        (dict(batch_size=96, num_workers=0), dict(batch_size=64, num_workers=2)),
        (dict(batch_size=64, num_workers=2), dict(batch_size=200, num_workers=0)),
        (dict(batch_size=96, num_workers=2), dict(batch_size=96, num_workers=1)),
    ],
)
@pytest.mark.parametrize("stop_after", [1, 13])
def test_resume_with_other_workers_or_batch_size_sees_every_row_once(tiny, saved, resumed, stop_after):
    first = StreamingBatchLoader(tiny, "train", window_blocks=3, seed=5, **saved)
    head = head_ids(first, stop_after)
    again = StreamingBatchLoader(tiny, "train", window_blocks=3, seed=5, **resumed)
    again.load_state_dict(json.loads(json.dumps(first.state_dict())))
    tail = epoch_ids(again)
    assert sorted(np.concatenate(head + tail).tolist()) == list(range(3000))
    assert len(tail) == -(-(3000 - sum(map(len, head))) // resumed["batch_size"]) or resumed["num_workers"] > 1
    # A second interruption inside the dealt-out remainder resumes exactly too.
    third = StreamingBatchLoader(tiny, "train", window_blocks=3, seed=5, **resumed)
    third.load_state_dict(json.loads(json.dumps(first.state_dict())))
    mid = head_ids(third, 2)
    fourth = StreamingBatchLoader(tiny, "train", window_blocks=3, seed=5, **saved)
    fourth.load_state_dict(json.loads(json.dumps(third.state_dict())))
    assert sorted(np.concatenate(head + mid + epoch_ids(fourth)).tolist()) == list(range(3000))
    # The epoch after the resharded one is an ordinary epoch of the new settings.
    fresh = StreamingBatchLoader(tiny, "train", window_blocks=3, seed=5, **resumed)
    epoch_ids(fresh)
    assert np.array_equal(np.concatenate(epoch_ids(again)), np.concatenate(epoch_ids(fresh)))


def test_resume_state_must_match(tiny):
    state = StreamingBatchLoader(tiny, "train", batch_size=96, seed=1).state_dict()
    other = StreamingBatchLoader(tiny, "train", batch_size=96, seed=2)
    with pytest.raises(DataError, match="seed was 1 when saved, is 2 now"):
        other.load_state_dict(state)


def test_drop_last_gives_full_batches(tiny):
    sizes = [len(b) for b in StreamingBatchLoader(tiny, "train", batch_size=128, drop_last=True)]
    assert set(sizes) == {128} and len(sizes) == 3000 // 128


def run_ranks(
    data: Path, split: str, nproc: int, workers: int, tmp_path: Path, *extra: str, prefix: str = "rank"
) -> list[dict]:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        str(HERE / "rank_worker.py"),
        str(data),
        split,
        "100",
        str(workers),
        str(tmp_path / prefix),
        *extra,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=HERE.parent.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((tmp_path / f"{prefix}{r}.json").read_text()) for r in range(nproc)]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_two_ranks_split_rows_exactly_once_in_lockstep(tiny, tmp_path, workers):
    ranks = run_ranks(tiny, "train", 2, workers, tmp_path)
    assert ranks[0]["batches"] == ranks[1]["batches"] == ranks[0]["len"] == ranks[1]["len"]
    got = Counter(ranks[0]["rows"] + ranks[1]["rows"])
    assert got == Counter(split_row_keys(tiny, "train"))
    assert set(ranks[0]["rows"]).isdisjoint(ranks[1]["rows"])


@pytest.mark.slow
@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)])
def test_state_saved_by_n_ranks_resumes_on_m(tiny, tmp_path, before, after):
    """Stop mid-epoch on ``before`` ranks, resume on ``after``: every row once over both parts."""
    head = run_ranks(tiny, "train", before, 0, tmp_path, "7", prefix="head")
    tail = run_ranks(tiny, "train", after, 0, tmp_path, "0", str(tmp_path / "headstate.json"), prefix="tail")
    assert all(r["batches"] == 7 for r in head)
    assert len({r["batches"] for r in tail}) == 1  # the new ranks stay in lockstep
    got = Counter([k for r in head + tail for k in r["rows"]])
    assert got == Counter(split_row_keys(tiny, "train"))


def test_truncated_shard_is_reported(tiny, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny, broken)
    shard = next((broken / "train").glob("shard.*.mds"))
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(
        DataError, match=r"shard\.00000\.mds: \d+ bytes, index\.json expects \d+; the shard is truncated"
    ):
        StreamingBatchLoader(broken, "train", batch_size=10)


def edited_copy(tiny: Path, tmp_path: Path, edit) -> Path:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    edit(manifest)
    (broken / "manifest.json").write_text(json.dumps(manifest))
    return broken


def test_manifest_block_count_not_matching_shards_is_reported(tiny, tmp_path):
    def add_block(m):
        m["splits"]["train"]["rows"] += 64
        m["splits"]["train"]["blocks"][0][0] += 1

    broken = edited_copy(tiny, tmp_path, add_block)
    with pytest.raises(
        DataError, match="47 blocks in the shards, manifest.json expects 48 blocks / 3064 rows for split 'train'"
    ):
        StreamingBatchLoader(broken, "train", batch_size=10)


def test_manifest_block_rows_not_matching_shards_is_reported(tiny, tmp_path):
    def grow_last_block(m):
        m["splits"]["train"]["rows"] += 1
        m["splits"]["train"]["blocks"][-1][1] += 1

    broken = edited_copy(tiny, tmp_path, grow_last_block)
    with pytest.raises(DataError, match="train block 46: 56 rows, manifest.json says 57"):
        epoch_ids(StreamingBatchLoader(broken, "train", batch_size=10, shuffle=False))


def test_corrupt_block_is_reported(tiny, tmp_path):
    """Same size, wrong schema: the manifest says 3 dense features, the shards hold 2."""
    broken = edited_copy(tiny, tmp_path, lambda m: m["dense"].append({"name": "extra", "transform": "none"}))
    with pytest.raises(DataError, match=r"train block \d+: column 'dense' has \d+ bytes, expected \d+"):
        next(iter(StreamingBatchLoader(broken, "train", batch_size=10)))


def test_unknown_split_and_missing_dataset(tiny, tmp_path):
    with pytest.raises(DataError, match=r"no split 'val'; the dataset has \['test', 'train'\]"):
        StreamingBatchLoader(tiny, "val", batch_size=10)
    with pytest.raises(DataError, match="no manifest"):
        StreamingBatchLoader(tmp_path / "nothing", "train", batch_size=10)


KILLED_RUN = """
import sys, time
from recfunnel.data.stream.loader import StreamingBatchLoader
loader = StreamingBatchLoader(sys.argv[1], "train", batch_size=10, num_workers=2, cache=sys.argv[2])
for batch in loader:
    print("iterating", flush=True)
    time.sleep(60)
"""


@pytest.mark.slow
def test_killed_run_leaves_nothing_that_blocks_the_next(tiny, tmp_path):
    """A "remote" dataset (here another folder) cached locally. Streaming refuses a cache folder
    that a live run's shared memory claims; a dead run's claim (its orphaned workers may still be
    alive) must not block the next run."""
    cache = tmp_path / "cache"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, str(tiny), str(cache)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout.readline().strip() == "iterating"
    os.kill(proc.pid, signal.SIGKILL)  # the main process only: its workers are orphaned, as in a crash
    proc.wait()
    proc.stdout.close()
    time.sleep(0.5)
    loader = StreamingBatchLoader(str(tiny), "train", batch_size=128, num_workers=2, cache=str(cache))
    ids = np.concatenate(epoch_ids(loader))
    assert sorted(ids.tolist()) == list(range(3000))
    os.killpg(proc.pid, signal.SIGKILL) if _group_alive(proc.pid) else None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory) -> Path:
    from recfunnel.data.sources.movielens import prepare_movielens

    out = tmp_path_factory.mktemp("ml") / "ml-100k"
    prepare_movielens("ml-100k", out, quiet=True)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2])
def test_movielens_epoch_yields_every_training_row_once(ml100k, tmp_path, nproc):
    ranks = run_ranks(ml100k, "train", nproc, 0, tmp_path)
    assert len({r["batches"] for r in ranks}) == 1
    got = Counter(row for r in ranks for row in r["rows"])
    want = Counter(split_row_keys(ml100k, "train"))
    # the default split for data with timestamps: each user's last rating to test, the one before to val
    assert got == want and sum(want.values()) == 100_000 - 2 * 943


LEAK_CHECK = """
import gc, json, os, sys
from recfunnel.data.stream.loader import StreamingBatchLoader

def held():
    return len(os.listdir("/dev/shm")), len(os.listdir("/proc/self/fd"))

def epoch(loader):
    for batch in loader:
        pass

# a first DataLoader with workers opens what torch keeps for the process (shared-memory handles,
# a pipe): count from after it, so the check is on what each loader leaves
with StreamingBatchLoader(sys.argv[1], "train", batch_size=500, num_workers=2) as loader:
    epoch(loader)
gc.collect()
before = held()
for workers in (0, 2):
    with StreamingBatchLoader(sys.argv[1], "train", batch_size=500, num_workers=workers) as loader:
        epoch(loader)
loader = StreamingBatchLoader(sys.argv[1], "train", batch_size=500)
del loader
gc.collect()
print(json.dumps({"before": before, "after": held()}))  # (/dev/shm entries, open descriptors)
"""


def test_loaders_leave_no_shared_memory_or_descriptors(tiny):
    # In a fresh interpreter: what earlier tests left running in this one (a Spark gateway's
    # sockets, say) opens and closes descriptors of its own. (Streaming also attaches to other
    # live jobs' segments: run this with no other job about.)
    done = subprocess.run([sys.executable, "-c", LEAK_CHECK, str(tiny)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    held = json.loads(done.stdout.strip().splitlines()[-1])
    assert held["after"] == held["before"]


def test_a_window_of_lists_is_shuffled_list_by_list():
    from recfunnel.data.stream.dataset import _shuffled

    order = _shuffled(np.random.default_rng(0), 40, 8)
    assert sorted(order.tolist()) == list(range(40))
    groups = order.reshape(-1, 8)
    assert (groups == groups[:, :1] + np.arange(8)).all() and (groups[:, 0] % 8 == 0).all()
    assert groups[:, 0].tolist() != sorted(groups[:, 0].tolist())
    # rows that are not whole groups (or groups of one) are shuffled row by row
    assert sorted(_shuffled(np.random.default_rng(0), 41, 8).tolist()) == list(range(41))
