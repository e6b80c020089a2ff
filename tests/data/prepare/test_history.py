"""The `history` feature: no row sees itself, anything later (splits in time), or any row its stage
did not know (training and validation rows see training rows; test rows training and validation
rows); serving gets each user's latest, and the validation split's moment its own."""

from collections import Counter, defaultdict

import numpy as np
import pandas as pd
import pytest

from recfunnel.data.format.manifest import load_manifest
from recfunnel.data.format.pairs import read_pairs
from recfunnel.data.sources.interactions import prepare_interactions
from tests.data.readback import read_split

LENGTH = 4


def _prepared(tmp_path, split: str, rows: int = 1500):
    """Random interactions with ties in time (40 distinct times) and repeated (user, item) pairs,
    prepared; the timestamp is also a dense feature, so that a row read back knows its time.
    (manifest, {"train" | "val": {user: [(time, item)] of training (+ validation) rows}},
    [(split, user, item, time, history)])."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "user_id": rng.integers(0, 30, rows),
            "item_id": rng.integers(0, 25, rows),
            "rating": rng.integers(1, 6, rows),
            "timestamp": rng.integers(0, 40, rows) * 1000,
        }
    )
    frame["when"] = frame["timestamp"].astype(float)
    frame.to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "data"
    prepare_interactions(tmp_path / "in.csv", out, dense=["when"], split=split, history=LENGTH, quiet=True)
    manifest = load_manifest(out)
    past = {"train": defaultdict(list), "val": defaultdict(list)}  # rows known: training, + validation
    for name in ("train", "val"):
        pairs = read_pairs(out, name)
        for user, item, t in zip(pairs.users, pairs.items, pairs.timestamps):
            for stage in ("train", "val")[("train", "val").index(name) :]:
                past[stage][user].append((t, item))
    stats = manifest.extra["dense_stats"]["when"]
    j = [f.name for f in manifest.multi_hot].index("history")
    user_col, item_col = manifest.sparse_keys.index("user_id"), manifest.sparse_keys.index("item_id")
    seen = []
    for name in manifest.splits:
        _, rows = read_split(out, name, manifest)
        starts = np.r_[0, np.cumsum(rows.mh_lengths[:, j])]
        times = np.round(rows.dense[:, 0].astype(np.float64) * stats["std"] + stats["mean"])
        for r in range(len(rows)):
            history = rows.mh_values[j][starts[r] : starts[r + 1]].tolist()
            seen.append((name, rows.sparse[r, user_col], rows.sparse[r, item_col], times[r], history))
    assert len(seen) == sum(manifest.split["rows"].values())
    return out, manifest, past, seen


def _latest(events: list[tuple[float, int]], history: list[int]) -> bool:
    """``history`` holds the items of the len(history) latest ``events`` (events tied in time at
    the cut: any of them), the latest first."""
    if len(history) > len(events):
        return False
    if not history:
        return True
    events = sorted(events, key=lambda e: e[0], reverse=True)
    cut = events[len(history) - 1][0]
    later = Counter(i for t, i in events if t > cut)
    at_cut = Counter(i for t, i in events if t == cut)
    held = Counter(history)
    return (
        not (later - held)
        and not ((held - later) - at_cut)
        and history[0] in {i for t, i in events if t == events[0][0]}
    )


@pytest.mark.parametrize("split", ["temporal", "time"])
def test_in_a_split_in_time_every_row_sees_training_items_strictly_before_it_the_latest_first(tmp_path, split):
    out, manifest, past, seen = _prepared(tmp_path, split)
    assert manifest.roles["history"] == "history" and "history" in manifest.roles["user_features"]
    feature = manifest.feature("history")
    assert feature.multi_hot and feature.vocab == "item_id" and feature.max_len == LENGTH
    val_seen = 0
    for name, user, item, t, history in seen:
        known = past["val" if name == "test" else "train"][user]  # what the row's stage knew
        earlier = [(s, i) for s, i in known if s < t]  # strictly earlier
        assert len(history) == min(LENGTH, len(earlier)), (name, user, t)
        assert _latest(earlier, history), (name, user, t, history)
        if item in history:  # the row's own item only when the user had it before
            assert item in [i for _, i in earlier]
        val_seen += name == "test" and len(earlier) > len([e for e in past["train"][user] if e[0] < t])
    assert val_seen > 0  # test rows do see validation rows
    _serving_gets_the_latest(out, past)


def test_in_a_random_split_every_row_sees_the_users_other_training_rows(tmp_path):
    """Held-out rows come from anywhere in a user's time line: a row sees the user's latest known
    rows but itself (a test row: training and validation rows; never a test row)."""
    out, manifest, past, seen = _prepared(tmp_path, "random")
    assert "left out" in manifest.extra["history"]["of"]
    for name, user, item, t, history in seen:
        others = list(past["val" if name == "test" else "train"][user])
        if name == "train":
            others.remove((t, item))  # itself (a repeated pair at the same time: one of them)
        assert len(history) == min(LENGTH, len(others)), (name, user, t)
        assert _latest(others, history), (name, user, t, history)
    _serving_gets_the_latest(out, past)


def _serving_gets_the_latest(out, past):
    """Serving (and the test split) get the latest of training + validation rows; the validation
    split's moment the latest of training rows."""
    users = pd.read_parquet(out / "users.parquet")
    assert len(users) == 30
    for column, stage in (("history", "val"), ("history_before_val", "train")):
        for user, history in zip(users["user_index"], users[column]):
            known = past[stage][user]
            assert len(history) == min(LENGTH, len(known)) and _latest(known, list(history)), (column, user)
    assert any(len(a) != len(b) or list(a) != list(b) for a, b in zip(users["history"], users["history_before_val"]))


def test_data_without_timestamps_has_no_history_and_zero_turns_it_off(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"user_id": rng.integers(0, 9, 200), "item_id": rng.integers(0, 9, 200)})
    frame.to_csv(tmp_path / "untimed.csv", index=False)
    frame.assign(timestamp=np.arange(200)).to_csv(tmp_path / "timed.csv", index=False)
    for source, history in (("untimed.csv", 50), ("timed.csv", 0)):
        out = tmp_path / f"out-{source}-{history}"
        prepare_interactions(tmp_path / source, out, history=history, quiet=True)
        manifest = load_manifest(out)
        assert manifest.roles["history"] is None and "history" not in manifest.sparse_keys
        assert "history" not in pd.read_parquet(out / "users.parquet").columns
        assert '"vocab":' not in (out / "manifest.json").read_text()  # as older versions wrote it


def test_rows_of_several_splits_at_once_get_what_each_gets_alone():
    from recfunnel.data.prepare.history import build_history
    from recfunnel.data.prepare.splits import TEST, TRAIN, VAL

    rng = np.random.default_rng(1)
    users, items = rng.integers(0, 5, 200), rng.integers(1, 30, 200)
    codes = rng.choice([TRAIN, VAL, TEST], 200, p=[0.6, 0.2, 0.2])
    history = build_history(users, items, rng.integers(0, 50, 200).astype(float), codes, LENGTH)
    idx = rng.permutation(200)[:80]  # training, validation and test rows mixed
    lengths, values = history.take(idx)
    alone = [history.take(np.array([i])) for i in idx]
    assert lengths.tolist() == [int(a[0][0]) for a in alone]
    assert values.tolist() == np.concatenate([a[1] for a in alone]).tolist()
    assert any(len(a[1]) for i, a in zip(idx, alone) if codes[i] == TEST)
