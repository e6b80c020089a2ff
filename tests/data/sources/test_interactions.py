"""`recfunnel prepare interactions`: a user's CSV/Parquet file -> an interactions dataset."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recfunnel.data.format.manifest import load_manifest
from recfunnel.data.format.vocab import Vocab
from recfunnel.data.sources.interactions import prepare_interactions
from recfunnel.errors import DataError
from tests.data.readback import assert_failed_cleanly, read_split

# 3 users x 4 items; raw ids 0 are ordinary ids. Times are out of file order on purpose.
CSV = """user_id,item_id,rating,timestamp,price,country,device
0,10,5,100,1.5,fr,ios
0,11,3,300,2.5,fr,android
0,0,4,200,9.0,fr,ios
1,10,2,150,1.5,de,ios
1,0,4,250,9.0,de,web
1,12,5,350,3.5,de,ios
2,0,1,120,9.0,us,web
2,11,4,220,2.5,us,ios
2,10,3,320,1.5,us,ios
"""


def write(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_end_to_end(tmp_path, cli):
    src, out = write(tmp_path, CSV), tmp_path / "out"
    code, stdout, stderr = cli(
        "prepare",
        "interactions",
        "--input",
        src,
        "--out",
        out,
        "--quiet",
        "--item-features",
        "price",
        "--user-features",
        "country",
        "--split",
        "temporal",
        "--val-fraction",
        "0",
    )
    assert (code, stdout) == (0, ""), stderr
    m = load_manifest(out)
    assert m.kind == "interactions"
    assert [f.name for f in m.single_hot] == ["user_id", "item_id", "country", "device"]
    # example_age: a split in time, so on by default
    assert [f.name for f in m.dense] == ["price", "example_age"] and m.dense[0].transform.startswith(
        "standardize(mean="
    )
    assert m.roles == {
        "user": "user_id",
        "item": "item_id",
        "user_features": ["country", "history", "example_age"],  # history: timestamps, so on by default
        "history": "history",
        "example_age": "example_age",
        "item_features": ["price"],
        "context_features": ["device"],
        "timestamp": True,
    }
    assert [(lab.name, lab.kind, lab.rule) for lab in m.labels] == [
        ("label", "binary", "rating >= 4"),
        ("rating", "regression", "the rating as given"),
    ]
    assert m.source["kind"] == "interactions" and m.source["files"][0]["name"] == "data.csv"
    assert m.source["files"][0]["bytes"] == len(CSV)
    # Raw id 0 is a normal id: it gets its own index >= 1, never the OOV bucket.
    items = Vocab.load(out / "vocab", "item_id")
    assert 0 in items.values.tolist() and items.encode(np.array([0]))[0] >= 1
    # temporal: each user's latest row (by time, not file order) is the test row.
    test = pd.read_parquet(out / "pairs" / "test.parquet")
    users = Vocab.load(out / "vocab", "user_id")
    got = dict(zip(users.decode(test["user_index"].to_numpy()), items.decode(test["item_index"].to_numpy())))
    assert got == {0: 11, 1: 12, 2: 10}
    assert test["timestamp"].tolist() == [300, 350, 320]


def test_shards_match_pairs_and_raw_ids_round_trip(tmp_path):
    src, out = write(tmp_path, CSV), tmp_path / "out"
    prepare_interactions(src, out, split="random", val_fraction=0, test_fraction=0.3, quiet=True, block_rows=2)
    m, rows = read_split(out, "train")
    pairs = pd.read_parquet(out / "pairs" / "train.parquet")
    key = lambda u, i, lab: sorted(zip(u.tolist(), i.tolist(), lab.tolist()))  # noqa: E731
    assert key(rows.sparse[:, 0], rows.sparse[:, 1], rows.labels[:, 1]) == key(
        pairs["user_index"], pairs["item_index"], pairs["rating"]
    )
    users, items = Vocab.load(out / "vocab", "user_id"), Vocab.load(out / "vocab", "item_id")
    raw = pd.read_csv(src)
    decoded = set(zip(users.decode(rows.sparse[:, 0]), items.decode(rows.sparse[:, 1]), rows.labels[:, 1]))
    assert decoded <= set(zip(raw.user_id, raw.item_id, raw.rating.astype(np.float32)))
    assert m.splits["train"].rows == 6 and m.splits["test"].rows == 3
    assert m.splits["train"].blocks == [[3, 2]]
    # Every catalog id has an index: users.parquet / items.parquet list them all, in index order.
    assert pd.read_parquet(out / "items.parquet")["item_id"].tolist() == items.values.tolist()
    assert sorted(pd.read_parquet(out / "users.parquet")["user_id"]) == [0, 1, 2]


def test_implicit_feedback_every_row_is_a_positive(tmp_path):
    src = write(tmp_path, "user_id,item_id\n5,7\n5,8\n6,7\n6,9\n7,8\n7,9\n")
    m = prepare_interactions(src, tmp_path / "out", val_fraction=0, test_fraction=0.34, quiet=True)
    assert [(lab.name, lab.rule) for lab in m.labels] == [("label", "implicit: every row is a positive")]
    assert m.splits["train"].positives == 1.0 and m.splits["test"].positives == 1.0
    assert m.roles["timestamp"] is False
    pairs = pd.read_parquet(tmp_path / "out" / "pairs" / "train.parquet")
    assert list(pairs.columns) == ["user_index", "item_index", "label"] and (pairs["label"] == 1).all()


def test_given_label_column_and_datetime_timestamps(tmp_path):
    src = write(
        tmp_path,
        "user_id,item_id,label,timestamp\na,x,1,2024-01-01 00:00:10\na,y,0,2024-01-01 00:00:20\n"
        "a,z,1,2024-01-02\nb,x,0,2024-01-01\nb,y,1,2024-01-03\nb,z,1,2024-01-04\n",
    )
    m = prepare_interactions(src, tmp_path / "out", split="time", val_fraction=0, test_fraction=0.34, quiet=True)
    assert [lab.name for lab in m.labels] == ["label"] and m.labels[0].rule.startswith("given in column 'label'")
    assert m.split["test_cut"] == 1704240000  # 2024-01-03 00:00:00 UTC, in seconds: the latest 2 of 6 rows
    test = pd.read_parquet(tmp_path / "out" / "pairs" / "test.parquet")
    assert test["timestamp"].tolist() == [1704240000, 1704326400] and test["label"].tolist() == [1, 1]
    assert Vocab.load(tmp_path / "out" / "vocab", "user_id").values.tolist() == ["a", "b"]


def test_user_mean_rule_matches_a_hand_computation(tmp_path):
    src = write(tmp_path, CSV)
    prepare_interactions(
        src, tmp_path / "all", label="user-mean", user_mean_on="all", val_fraction=0, test_fraction=0.2, quiet=True
    )
    m = load_manifest(tmp_path / "all")
    assert m.labels[0].rule == "rating >= the user's mean rating over all rows (val/test ratings included)"
    # Means: user 0 (5+3+4)/3 = 4, user 1 (2+4+5)/3 = 3.67, user 2 (1+4+3)/3 = 2.67.
    want = {(0, 10): 1, (0, 11): 0, (0, 0): 1, (1, 10): 0, (1, 0): 1, (1, 12): 1, (2, 0): 0, (2, 11): 1, (2, 10): 1}
    assert _labels_by_raw_pair(tmp_path / "all") == want
    # On train rows only, a user's held-out rating does not move the mean.
    prepare_interactions(src, tmp_path / "train", label="user-mean", split="temporal", val_fraction=0, quiet=True)
    m = load_manifest(tmp_path / "train")
    assert "over train rows" in m.labels[0].rule
    # Train means: user 0 (5+4)/2 = 4.5 -> (0,11)=3 is 0; user 1 (2+4)/2 = 3 -> (1,12)=5 is 1; user 2 (1+4)/2 = 2.5.
    got = _labels_by_raw_pair(tmp_path / "train")
    assert got == {**want, (0, 0): 0}


def _labels_by_raw_pair(folder: Path) -> dict:
    users, items = Vocab.load(folder / "vocab", "user_id"), Vocab.load(folder / "vocab", "item_id")
    out = {}
    for split in ("train", "val", "test"):
        if (folder / "pairs" / f"{split}.parquet").exists():
            p = pd.read_parquet(folder / "pairs" / f"{split}.parquet")
            for u, i, lab in zip(users.decode(p.user_index.to_numpy()), items.decode(p.item_index.to_numpy()), p.label):
                out[(u, i)] = int(lab)
    return out


def test_parquet_lists_are_multi_hot_and_item_tables_extend_the_catalog(tmp_path):
    inter = pd.DataFrame(
        {
            "user_id": [1, 1, 2, 2, 3, 3],
            "item_id": [0, 1, 0, 2, 1, 2],
            "rating": [5.0, 1, 4, 2, 5, 3],
            "hour": [1, 2, 3, 4, 5, 6],
        }
    )
    items = pd.DataFrame(
        {
            "item_id": [0, 1, 2, 99],
            "title": ["zero", "one", "two", "never rated"],
            "tags": [["a", "b"], ["b"], [], ["c", "a"]],
            "weight": [1.0, 2.0, np.nan, 4.0],
        }
    )
    inter.to_parquet(tmp_path / "i.parquet")
    items.to_parquet(tmp_path / "items.parquet")
    with pytest.raises(DataError, match="items.parquet row 3: weight is missing"):  # NaN in a dense feature
        prepare_interactions(tmp_path / "i.parquet", tmp_path / "out", items=tmp_path / "items.parquet", quiet=True)
    items.loc[2, "weight"] = 3.0
    items.to_parquet(tmp_path / "items.parquet")
    m = prepare_interactions(
        tmp_path / "i.parquet",
        tmp_path / "out",
        items=tmp_path / "items.parquet",
        dense=["hour"],
        val_fraction=0,
        test_fraction=0.34,
        quiet=True,
    )
    assert m.roles["item_features"] == ["tags", "weight"] and m.roles["context_features"] == ["hour"]
    assert [f.name for f in m.multi_hot] == ["tags"] and m.feature("tags").max_len == 2
    table = pd.read_parquet(tmp_path / "out" / "items.parquet")
    assert table["item_id"].tolist()[-1] == 99 and m.extra["items"] == 4  # never rated, still in the catalog
    tags = Vocab.load(tmp_path / "out" / "vocab", "tags")
    by_id = {r.item_id: (r.title, tags.decode(np.asarray(r.tags, np.int64)).tolist()) for r in table.itertuples()}
    assert by_id == {0: ("zero", ["a", "b"]), 1: ("one", ["b"]), 2: ("two", []), 99: ("never rated", ["c", "a"])}
    _, rows = read_split(tmp_path / "out", "train")
    raw_items = Vocab.load(tmp_path / "out" / "vocab", "item_id").decode(rows.sparse[:, 1])
    assert rows.mh_lengths[:, 0].tolist() == [len(by_id[i][1]) for i in raw_items]


def test_multi_hot_text_and_latest_user_value(tmp_path):
    src = write(
        tmp_path,
        "user_id,item_id,timestamp,city,tags\n1,1,5,paris,a|b\n1,2,9,rome,b\n1,3,1,oslo,\n"
        "2,1,2,rome,a|a|c\n2,3,3,rome,c\n2,2,4,rome,\n",
    )
    m = prepare_interactions(
        src, tmp_path / "out", user_features=["city"], multi_hot=["tags"], split="temporal", val_fraction=0, quiet=True
    )
    users = pd.read_parquet(tmp_path / "out" / "users.parquet")
    city = Vocab.load(tmp_path / "out" / "vocab", "city")
    assert dict(zip(users.user_id, city.decode(users.city.to_numpy()))) == {1: "rome", 2: "rome"}  # latest by time
    assert m.feature("tags").multi_hot and m.feature("tags").max_len == 2  # "a|a|c" is the set {a, c}


BAD = [
    (
        "userId,item_id,rating\n1,2,3\n",
        [],
        ["data.csv: no column 'user_id'", "did you mean 'userId'?", "--rename userId=user_id"],
    ),
    ("user_id,item_id,rating\n1,2,3\n1,3,good\n", [], ["data.csv line 3: rating 'good' is not a number"]),
    (
        "user_id,item_id,rating,price\n1,2,3,1.5\n1,3,4,\n",
        ["--dense", "price"],
        ["data.csv line 3: price is missing (NaN)"],
    ),
    ("user_id,item_id,rating,price\n1,2,3,1.5\n1,3,4,inf\n", [], ["data.csv line 3: price is inf"]),
    ("user_id,item_id,rating\n1,2,3\n-4,3,4\n", [], ["data.csv line 3: user_id -4 is negative"]),
    ("user_id,item_id,rating\n1,2,3\n4,3.5,4\n", [], ["data.csv line 3: item_id 3.5 is not a whole number"]),
    ("userId,item_id\n1,2\n-4,3\n", ["--rename", "userId=user_id"], ["data.csv line 3: userId -4 is negative"]),
    ("user_id,item_id,rating\n1,2,3\n1,,4\n", [], ["data.csv line 3: item_id is missing"]),
    ("", [], ["data.csv: empty file"]),
    ("user_id,item_id,rating\n", [], ["data.csv: no rows (only a header)"]),
    ("user_id,item_id,rating\n1,2,3\n1,3,7\n", ["--rating-range", "1,5"], ["data.csv line 3: rating 7 is outside 1-5"]),
    ("user_id,item_id,label\n1,2,1\n1,3,2\n", [], ["data.csv line 3: label 2 is not 0 or 1"]),
    (
        "user_id,item_id,timestamp\n1,2,5\n1,3,yesterday\n",
        [],
        ["data.csv line 3: timestamp 'yesterday' is not a number"],
    ),
    (
        "user_id,item_id,timestamp\n1,2,2024-01-05\n1,3,soon\n",
        [],
        ["data.csv line 3: timestamp 'soon' is neither a number nor a date/time"],
    ),
    ("user_id,item_id\n1,2\n1,3,4\n", [], ["data.csv: malformed", "line 3"]),
    (
        "user_id,item_id,colour\n1,2,red\n",
        ["--dense", "color"],
        ["--dense: no feature column 'color'", "did you mean 'colour'?"],
    ),
    ("user_id,item_id\n1,2\n", ["--label", "threshold"], ["--label threshold derives labels from ratings"]),
]


@pytest.mark.parametrize("text, options, expected", BAD, ids=[b[2][0][:40] for b in BAD])
def test_bad_input_fails_with_one_line_and_no_output(tmp_path, cli, text, options, expected):
    out = tmp_path / "out"
    result = cli("prepare", "interactions", "--input", write(tmp_path, text), "--out", out, "--quiet", *options)
    assert_failed_cleanly(result, out, *expected)


def test_existing_output_needs_overwrite(tmp_path, cli):
    src, out = write(tmp_path, CSV), tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    code, _, err = cli("prepare", "interactions", "--input", src, "--out", out, "--quiet")
    assert code == 2 and "already exists; pass --overwrite" in err and (out / "keep.txt").exists()
    code, _, err = cli("prepare", "interactions", "--input", src, "--out", out, "--quiet", "--overwrite")
    assert code == 0 and not (out / "keep.txt").exists()
    assert json.loads((out / "manifest.json").read_text())["kind"] == "interactions"


def test_users_table_features_and_users_without_a_row(tmp_path):
    src = write(tmp_path, CSV)
    users = write(tmp_path, "user_id,age,plan\n0,30,free\n1,50,pro\n7,40,pro\n", "users.csv")  # no row for user 2
    m = prepare_interactions(
        src, tmp_path / "out", users=users, dense=["age"], val_fraction=0, test_fraction=0.2, quiet=True
    )
    assert (
        m.roles["user_features"] == ["age", "plan", "history", "example_age"] and m.extra["users"] == 4
    )  # user 7 never interacted
    assert m.extra["dense_stats"]["age"] == {"mean": 40.0, "std": 10.0, "missing": 1}  # users 0, 1 are in train
    table = pd.read_parquet(tmp_path / "out" / "users.parquet").set_index("user_id")
    assert table.loc[2, "age"] == 0.0 and table.loc[2, "plan"] == 0  # missing -> the mean / the OOV bucket
    assert table.loc[7, "age"] == pytest.approx(0.0) and table.loc[1, "age"] == pytest.approx(1.0)
    plan = Vocab.load(tmp_path / "out" / "vocab", "plan")
    assert plan.decode(table["plan"].loc[[0, 1, 7]].to_numpy()).tolist() == ["free", "pro", "pro"]


def test_ids_from_2_to_the_63_up_are_kept_exactly(tmp_path):
    big = [2**63, 2**63 + 1, 2**64 - 1]
    rows = "".join(f"{u},{i},4,{t}\n" for t, (u, i) in enumerate([(big[0], 1), (big[1], 2), (big[2], 1), (5, 2)] * 3))
    manifest = prepare_interactions(
        write(tmp_path, "user_id,item_id,rating,timestamp\n" + rows), tmp_path / "out", quiet=True
    )
    values = Vocab.load(tmp_path / "out" / "vocab", "user_id").values.tolist()
    assert sorted(values) == sorted(str(v) for v in [*big, 5])  # exact, as text: no negative numbers
    assert manifest.feature("user_id").cardinality == 5


def test_a_column_named_twice_is_refused_naming_it(tmp_path, cli):
    text = "user_id,item_id,rating,timestamp,rating\n" + "".join(
        f"{u},{i},4,{u},3\n" for u in range(5) for i in range(3)
    )
    out = tmp_path / "out"
    message = assert_failed_cleanly(
        cli("prepare", "interactions", "--input", write(tmp_path, text), "--out", out), out, "data.csv"
    )
    assert "column 'rating' appears twice in the header (columns 3 and 5)" in message
    frame = pd.DataFrame({"user_id": [1, 2], "item_id": [3, 4]})
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table([frame["user_id"], frame["item_id"], frame["item_id"]], names=["user_id", "item_id", "item_id"]),
        tmp_path / "dup.parquet",
    )
    message = assert_failed_cleanly(
        cli("prepare", "interactions", "--input", tmp_path / "dup.parquet", "--out", out), out, "dup.parquet"
    )
    assert "column 'item_id' appears twice" in message


def test_a_bad_byte_is_named_by_its_line_and_offset_also_gzipped(tmp_path, cli):
    import gzip

    text = "user_id,item_id,rating,timestamp\n" + "".join(f"{i % 97},{i % 31},4,{i}\n" for i in range(4000))
    data = text.encode()
    offset = sum(len(line) + 1 for line in data.split(b"\n")[:3001]) + 2  # inside line 3002 of the file
    data = data[:offset] + b"\xe9" + data[offset + 1 :]
    line = data[:offset].count(b"\n") + 1
    for name, content in (("bad.csv", data), ("bad.csv.gz", gzip.compress(data))):
        (tmp_path / name).write_bytes(content)
        out = tmp_path / f"out-{name}"
        message = assert_failed_cleanly(cli("prepare", "interactions", "--input", tmp_path / name, "--out", out), out)
        assert f"{name} line {line} (byte {offset:,}): not utf-8 text (bytes e9)" in message
    (tmp_path / "good.csv.gz").write_bytes(gzip.compress(text.encode()))
    assert (
        cli("prepare", "interactions", "--input", tmp_path / "good.csv.gz", "--out", tmp_path / "gz", "--quiet")[0] == 0
    )
    assert load_manifest(tmp_path / "gz").extra["rows"] == 4000
