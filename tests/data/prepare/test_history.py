"""The `history` feature: no row sees itself, anything later (splits in time) or any row that is
not a training row; serving gets each user's latest."""

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
    (manifest, {user: [(time, item)] of training rows}, [(split, user, item, time, history)])."""
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
    train = read_pairs(out, "train")
    past = defaultdict(list)
    for user, item, t in zip(train.users, train.items, train.timestamps):
        past[user].append((t, item))
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
    for name, user, item, t, history in seen:
        earlier = [(s, i) for s, i in past[user] if s < t]  # training rows only, strictly earlier
        assert len(history) == min(LENGTH, len(earlier)), (name, user, t)
        assert _latest(earlier, history), (name, user, t, history)
        if item in history:  # the row's own item only when the user had it before
            assert item in [i for _, i in earlier]
    _serving_gets_the_latest(out, past)


def test_in_a_random_split_every_row_sees_the_users_other_training_rows(tmp_path):
    """Held-out rows come from anywhere in a user's time line: a row sees the user's latest
    training rows but itself (never a validation or test row)."""
    out, manifest, past, seen = _prepared(tmp_path, "random")
    assert "left out" in manifest.extra["history"]["of"]
    for name, user, item, t, history in seen:
        others = list(past[user])
        if name == "train":
            others.remove((t, item))  # itself (a repeated pair at the same time: one of them)
        assert len(history) == min(LENGTH, len(others)), (name, user, t)
        assert _latest(others, history), (name, user, t, history)
    _serving_gets_the_latest(out, past)


def _serving_gets_the_latest(out, past):
    users = pd.read_parquet(out / "users.parquet")
    assert len(users) == 30
    for user, history in zip(users["user_index"], users["history"]):
        assert len(history) == min(LENGTH, len(past[user])) and _latest(past[user], list(history))


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
