"""`recfunnel prepare movielens`: every variant's own files, on tiny generated copies, and the real ml-100k."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recfunnel.data.format.manifest import load_manifest
from recfunnel.data.format.vocab import Vocab
from recfunnel.data.sources.movielens import prepare_movielens
from recfunnel.errors import DataError
from tests.data.readback import assert_failed_cleanly, read_split

RATINGS_DAT = (
    "1::1::5::978300760\n1::2::3::978302109\n1::3::4::978301968\n2::1::4::978300275\n"
    "2::3::2::978824291\n2::4::5::978302268\n3::2::1::978300000\n3::4::4::978300001\n3::1::3::978300002\n"
)
USERS_DAT = "1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117-1234\n"
MOVIES_DAT = (
    "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Jumanji (1995)::Adventure|Children's|Fantasy\n"
    "3::Grumpier Old Men (1995)::Comedy|Romance\n4::Café: Time (2000)::Drama\n"
    "5::Never Rated (1999)::Drama\n"
)
RATINGS_CSV = (
    "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n1,6,0.5,964982224\n"
    "2,1,5.0,964983815\n2,6,3.5,964982931\n2,3,2.0,964982400\n3,1,3.0,964980868\n3,3,4.0,964982176\n"
)
MOVIES_CSV = (
    "movieId,title,genres\n1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
    '3,"American President, The (1995)",Comedy|Drama|Romance\n6,Heat (1995),Action|Crime|Thriller\n'
    "9,No Year,(no genres listed)\n"
)
SETS_CSV = (
    "userId,movieId,rating,tstamp\nab12ff,1,4.0,2019-03-14 17:33:53\nab12ff,3,2.5,2019-03-15 10:00:00\n"
    "ab12ff,6,5.0,2019-03-16 10:00:00\n0c9e,1,3.0,2019-04-01 08:00:00\n0c9e,6,4.5,2019-04-02 08:00:00\n"
    "0c9e,3,1.0,2019-04-03 08:00:00\n"
)


def make(folder: Path, files: dict[str, str], encoding: str = "utf-8") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_bytes(text.encode(encoding))
    return folder


def decoded(out: Path, table: str, key: str, column: str) -> dict:
    """{raw id: decoded value} of a users/items.parquet feature column."""
    frame = pd.read_parquet(out / f"{table}.parquet")
    vocab = Vocab.load(out / "vocab", column)
    if isinstance(frame[column].iloc[0], np.ndarray):
        return {k: vocab.decode(np.asarray(v, np.int64)).tolist() for k, v in zip(frame[key], frame[column])}
    return dict(zip(frame[key], vocab.decode(frame[column].to_numpy())))


def test_ml1m_files(tmp_path):
    make(
        tmp_path / "ml-1m",
        {"ratings.dat": RATINGS_DAT, "users.dat": USERS_DAT, "movies.dat": MOVIES_DAT},
        encoding="latin-1",
    )
    out = tmp_path / "out"
    m = prepare_movielens("ml-1m", out, source=tmp_path, split="temporal", val_fraction=0, quiet=True)  # finds ml-1m/
    assert m.source["variant"] == "ml-1m" and [f["name"] for f in m.source["files"]] == [
        "ratings.dat",
        "users.dat",
        "movies.dat",
    ]
    assert m.roles["user_features"] == ["gender", "occupation", "zip_prefix", "age_bucket", "history", "example_age"]
    assert m.roles["item_features"] == ["genres", "year"]
    assert decoded(out, "users", "user_id", "zip_prefix") == {1: "4", 2: "7", 3: "5"}
    assert decoded(out, "users", "user_id", "age_bucket") == {1: 1, 2: 56, 3: 25}
    assert decoded(out, "users", "user_id", "gender") == {1: "F", 2: "M", 3: "M"}
    genres = decoded(out, "items", "item_id", "genres")
    assert genres[1] == ["Animation", "Children's", "Comedy"] and genres[5] == ["Drama"]
    items = pd.read_parquet(out / "items.parquet").set_index("item_id")
    assert items.loc[4, "title"] == "Café: Time (2000)"  # latin-1 decoded; the ':' in the title is kept
    assert items.index.tolist()[-1] == 5 and m.extra["items"] == 5  # never rated, still in the catalog
    year = m.extra["dense_stats"]["year"]
    assert year["mean"] == pytest.approx((1995 * 3 + 2000) / 4)  # train items' years (item 5 is not in train)
    assert items.loc[4, "year"] == pytest.approx((2000 - year["mean"]) / year["std"], rel=1e-5)


def test_ml_latest_small_files(tmp_path):
    src = make(tmp_path / "latest", {"ratings.csv": RATINGS_CSV, "movies.csv": MOVIES_CSV})
    out = tmp_path / "out"
    m = prepare_movielens(
        "ml-latest-small",
        out,
        source=src,
        label="threshold",
        threshold=3.5,
        split="random",
        val_fraction=0,
        test_fraction=0.25,
        quiet=True,
    )
    assert m.labels[0].rule == "rating >= 3.5" and m.extra["rating_range"] == [0.5, 5]
    assert m.roles["user_features"] == ["history"] and m.extra["items"] == 4
    genres = decoded(out, "items", "item_id", "genres")
    assert genres[9] == [] and genres[3] == ["Comedy", "Drama", "Romance"]
    items = pd.read_parquet(out / "items.parquet").set_index("item_id")
    assert items.loc[3, "title"] == "American President, The (1995)"
    assert items.loc[9, "year"] == 0.0 and m.extra["dense_stats"]["year"]["missing"] == 1  # no year -> the mean
    pairs = pd.concat([pd.read_parquet(out / "pairs" / f"{s}.parquet") for s in ("train", "test")])
    assert sorted(pairs["rating"]) == sorted(pd.read_csv(src / "ratings.csv")["rating"])
    assert ((pairs["rating"] >= 3.5) == (pairs["label"] == 1)).all()


@pytest.mark.parametrize("with_movies", [False, True])
def test_sets_files(tmp_path, with_movies):
    files = {"item_ratings.csv": SETS_CSV, **({"movies.csv": MOVIES_CSV} if with_movies else {})}
    src, out = make(tmp_path / "sets", files), tmp_path / "out"
    m = prepare_movielens("sets", out, source=src, split="temporal", val_fraction=0, quiet=True)
    users = Vocab.load(out / "vocab", "user_id")
    assert sorted(users.values.tolist()) == ["0c9e", "ab12ff"]  # hash strings, not numbers
    test = pd.read_parquet(out / "pairs" / "test.parquet")
    last = dict(zip(users.decode(test["user_index"].to_numpy()), test["timestamp"]))
    assert last == {"ab12ff": 1552730400, "0c9e": 1554278400}  # 2019-03-16 10:00 and 2019-04-03 08:00 UTC
    assert [f["name"] for f in m.source["files"]] == ["item_ratings.csv"] + (["movies.csv"] if with_movies else [])
    assert m.roles["item_features"] == (["genres", "year"] if with_movies else [])
    assert m.extra["items"] == (4 if with_movies else 3)


ML100K_ORIGINAL = {
    "u.data": "1\t1\t5\t874965758\n1\t2\t3\t876893171\n2\t1\t4\t888550871\n2\t3\t2\t888551000\n"
    "3\t2\t1\t889237004\n3\t3\t4\t889237100\n1\t3\t4\t876893200\n",
    "u.user": "1|24|M|technician|85711\n2|53|F|other|94043\n3|17|M|writer|T8H1N\n",
    "u.item": "1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "2|GoldenEye (1995)|01-Jan-1995||http://x|0|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0|1|0|0\n"
    "3|Mystery Film|||http://x|1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "4|Unrated (1996)|01-Jan-1996||http://x|0|0|0|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0\n",
}
ML100K_ATOMIC = {
    "ml-100k.inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    + "".join(line + "\n" for line in ML100K_ORIGINAL["u.data"].splitlines()),
    "ml-100k.user": "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
    + ML100K_ORIGINAL["u.user"].replace("|", "\t"),
    "ml-100k.item": "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "1\tToy Story (1995)\t1995\tAnimation Children's Comedy\n"
    "2\tGoldenEye (1995)\t1995\tAction Adventure Thriller\n"
    "3\tMystery Film\tunkonwn\tunknown\n4\tUnrated (1996)\t1996\tDrama\n",
}


def test_ml100k_original_and_recbole_files_give_the_same_dataset(tmp_path):
    outs = []
    for name, files in (("orig", ML100K_ORIGINAL), ("atomic", ML100K_ATOMIC)):
        src = make(tmp_path / name, files, encoding="latin-1")
        outs.append(tmp_path / f"out-{name}")
        prepare_movielens("ml-100k", outs[-1], source=src, split="temporal", val_fraction=0, quiet=True)
    a, b = outs
    for f in ("pairs/train", "pairs/test", "users", "vocab/genres", "vocab/zip_prefix", "vocab/item_id"):
        pd.testing.assert_frame_equal(pd.read_parquet(a / f"{f}.parquet"), pd.read_parquet(b / f"{f}.parquet"))
    items_a, items_b = (pd.read_parquet(o / "items.parquet").drop(columns="title") for o in outs)
    pd.testing.assert_frame_equal(items_a, items_b)
    assert decoded(a, "items", "item_id", "genres") == {
        1: ["Animation", "Children's", "Comedy"],
        2: ["Action", "Adventure", "Thriller"],
        3: ["unknown"],
        4: ["Drama"],
    }
    assert decoded(a, "users", "user_id", "age_bucket") == {1: 18, 2: 50, 3: 1}
    assert decoded(a, "users", "user_id", "zip_prefix") == {1: "8", 2: "9", 3: "T"}
    assert load_manifest(a).extra["dense_stats"]["year"]["missing"] == 1  # "Mystery Film" has no year


def files_1m(ratings=RATINGS_DAT, users=USERS_DAT, movies=MOVIES_DAT) -> dict:
    return {"ratings.dat": ratings, "users.dat": users, "movies.dat": movies}


def files_latest(ratings=RATINGS_CSV, movies=MOVIES_CSV) -> dict:
    return {"ratings.csv": ratings, "movies.csv": movies}


def ml1m_ratings(old: str, new: str) -> dict:
    return files_1m(ratings=RATINGS_DAT.replace(old, new))


def latest_ratings(old: str, new: str) -> dict:
    return files_latest(ratings=RATINGS_CSV.replace(old, new))


def ml100k(name: str, old: str, new: str) -> dict:
    return {**ML100K_ORIGINAL, name: ML100K_ORIGINAL[name].replace(old, new)}


BAD = [
    ("ml-10m", {}, ["--variant: unknown MovieLens variant 'ml-10m'", "ml-100k, ml-1m"]),
    (
        "ml-1m",
        {"ratings.dat": RATINGS_DAT, "notes.txt": "x"},
        ["no MovieLens ml-1m files (expected ratings.dat, users.dat, movies.dat; found notes.txt, ratings.dat)"],
    ),
    ("ml-1m", ml1m_ratings("1::2::3::", "1::2::6::"), ["ratings.dat line 2: rating 6 is outside 1-5"]),
    ("ml-1m", ml1m_ratings("1::2::3::", "1::2::3.5::"), ["ratings.dat line 2: rating 3.5 is not a multiple of 1"]),
    ("ml-1m", files_1m(ratings="-1" + RATINGS_DAT[1:]), ["ratings.dat line 1: user_id -1 is negative"]),
    ("ml-1m", ml1m_ratings("1::2::3::978302109", "1::2::3"), ["ratings.dat", "line 2"]),
    (
        "ml-1m",
        files_1m(movies=MOVIES_DAT.replace("2::Jumanji", "x::Jumanji")),
        ["movies.dat line 2: item_id 'x' is not a number"],
    ),
    ("ml-latest", latest_ratings("1,6,0.5", "1,6,5.5"), ["ratings.csv line 4: rating 5.5 is outside 0.5-5"]),
    ("ml-latest", latest_ratings("1,6,0.5", "1,6,3.3"), ["ratings.csv line 4: rating 3.3 is not a multiple of 0.5"]),
    ("ml-latest", latest_ratings("1,6,0.5", "1,6,great"), ["ratings.csv line 4: rating 'great' is not a number"]),
    ("ml-latest", latest_ratings("1,6,0.5", "-1,6,0.5"), ["ratings.csv line 4: userId -1 is negative"]),
    ("ml-latest", latest_ratings("1,6,0.5", "u1,6,0.5"), ["ratings.csv line 4: userId 'u1' is not a number"]),
    (
        "ml-latest",
        latest_ratings("userId,", "user_id,"),
        ["ratings.csv: no column 'userId'", "did you mean 'user_id'?"],
    ),
    ("ml-latest", files_latest(ratings=""), ["ratings.csv: empty file"]),
    ("ml-latest", files_latest(movies="movieId,title,genres\n"), ["movies.csv: no rows (only a header)"]),
    (
        "ml-latest",
        files_latest(movies=MOVIES_CSV + "3,Again (1990),Drama\n"),
        ["movies.csv line 6: movieId 3 appears again (first at line 3)"],
    ),
    ("ml-100k", ml100k("u.data", "\t3\t876893171", "\tx\t876893171"), ["u.data line 2: rating 'x' is not a number"]),
    ("ml-100k", ml100k("u.user", "|24|", "|old|"), ["u.user line 1: age 'old' is not a number"]),
    (
        "sets",
        {"item_ratings.csv": SETS_CSV.replace("2019-04-01 08:00:00", "someday")},
        ["item_ratings.csv line 5: tstamp 'someday' is neither a number nor a date/time"],
    ),
]


@pytest.mark.parametrize("variant, files, expected", BAD, ids=[f"{b[0]}: {b[2][0][:40]}" for b in BAD])
def test_bad_input_fails_with_one_line_and_no_output(tmp_path, cli, variant, files, expected):
    src, out = make(tmp_path / "src", files, encoding="latin-1"), tmp_path / "out"
    result = cli("prepare", "movielens", "--variant", variant, "--source", src, "--out", out, "--quiet")
    assert_failed_cleanly(result, out, *expected)


def test_variants_other_than_ml100k_need_a_source(tmp_path):
    with pytest.raises(DataError, match="--variant ml-1m: pass --source"):
        prepare_movielens("ml-1m", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---- the real MovieLens 100k (RecBole's copy, fetched into the cache on first use) ----


@pytest.fixture(scope="module")
def ml100k_files() -> Path:
    from recfunnel.data.sources.fetch import fetch_movielens

    return fetch_movielens(quiet=True)


@pytest.fixture(scope="module")
def tfrs_split(tmp_path_factory, ml100k_files) -> Path:
    """The TensorFlow Recommenders protocol: every rating a positive, random 80/20."""
    out = tmp_path_factory.mktemp("ml100k") / "tfrs"
    from recfunnel.cli import main

    args = [
        "prepare",
        "movielens",
        "--variant",
        "ml-100k",
        "--out",
        str(out),
        "--quiet",
        "--label",
        "all",
        "--split",
        "random",
        "--val-fraction",
        "0",
        "--test-fraction",
        "0.2",
    ]
    assert main(args) == 0
    return out


def test_ml100k_counts_and_raw_id_round_trip(tfrs_split, ml100k_files):
    m = load_manifest(tfrs_split)
    assert m.splits["train"].rows + m.splits["test"].rows == 100_000 and m.splits["test"].rows == 20_000
    assert "val" not in m.splits and m.split["kind"] == "random" and m.split["test_fraction"] == 0.2
    assert m.feature("user_id").cardinality == 944 and m.feature("item_id").cardinality == 1683  # + OOV bucket
    assert m.labels[0].rule == "every rating is a positive" and m.splits["train"].positives == 1.0
    users, items = Vocab.load(tfrs_split / "vocab", "user_id"), Vocab.load(tfrs_split / "vocab", "item_id")
    idx = np.arange(1, items.cardinality)
    assert (items.encode(items.decode(idx)) == idx).all()
    assert pd.read_parquet(tfrs_split / "items.parquet")["item_id"].tolist() == items.values.tolist()
    raw = pd.read_csv(ml100k_files / "ml-100k.inter", sep="\t")
    raw.columns = ["user_id", "item_id", "rating", "timestamp"]
    pairs = pd.concat([pd.read_parquet(tfrs_split / "pairs" / f"{s}.parquet") for s in ("train", "test")])
    got = pd.DataFrame(
        {
            "user_id": users.decode(pairs["user_index"].to_numpy()).astype(np.int64),
            "item_id": items.decode(pairs["item_index"].to_numpy()).astype(np.int64),
            "rating": pairs["rating"].to_numpy(np.float64),
            "timestamp": pairs["timestamp"].to_numpy(),
        }
    )
    key = ["user_id", "item_id", "rating", "timestamp"]
    pd.testing.assert_frame_equal(
        got.sort_values(key).reset_index(drop=True), raw.sort_values(key).reset_index(drop=True), check_dtype=False
    )


def test_ml100k_features_match_the_files(tfrs_split):
    genres = decoded(tfrs_split, "items", "item_id", "genres")
    assert genres[1] == ["Animation", "Children's", "Comedy"]  # Toy Story
    assert genres[50] == ["Action", "Adventure", "Romance", "Sci-Fi", "War"]  # Star Wars
    columns = ("gender", "occupation", "zip_prefix", "age_bucket")
    user = {c: decoded(tfrs_split, "users", "user_id", c)[1] for c in columns}
    # ml-100k.user line 2: 1  24  M  technician  85711
    assert user == {"gender": "M", "occupation": "technician", "zip_prefix": "8", "age_bucket": 18}
    m = load_manifest(tfrs_split)
    age = m.extra["dense_stats"]["age"]
    users = pd.read_parquet(tfrs_split / "users.parquet").set_index("user_id")
    assert users.loc[1, "age"] == pytest.approx((24 - age["mean"]) / age["std"], rel=1e-5)
    assert m.extra["dense_stats"]["year"]["missing"] == 2  # RecBole's "unkonwn" and "V" years


def test_ml100k_shards_hold_the_pairs_in_mixed_blocks(tfrs_split):
    m, rows = read_split(tfrs_split, "train")
    assert len(rows) == 80_000 and rows.sparse.shape[1] == len(m.single_hot) and rows.mh_lengths.shape[1] == 2
    pairs = pd.read_parquet(tfrs_split / "pairs" / "train.parquet")
    assert sorted(zip(rows.sparse[:, 0].tolist(), rows.sparse[:, 1].tolist())) == sorted(
        zip(pairs["user_index"].tolist(), pairs["item_index"].tolist())
    )
    assert len(np.unique(rows.sparse[:4096, 0])) > 600  # one block mixes most of the 943 users
    items = pd.read_parquet(tfrs_split / "items.parquet").set_index("item_index")
    lengths = items["genres"].map(len)
    assert (rows.mh_lengths[:, 0] == lengths.loc[rows.sparse[:, 1]].to_numpy()).all()
    assert [f.name for f in m.multi_hot] == ["genres", "history"] and rows.mh_lengths[:, 1].max() == 50


def test_ml100k_temporal_split_and_threshold_labels(tmp_path, ml100k_files):
    prepare_movielens("ml-100k", tmp_path / "out", split="temporal", quiet=True)
    m = load_manifest(tmp_path / "out")
    assert m.labels[0].rule == "rating >= 4"
    assert m.splits["test"].rows == 943 and m.splits["val"].rows == 943  # every user has >= 20 ratings
    raw = pd.read_csv(ml100k_files / "ml-100k.inter", sep="\t")
    raw.columns = ["user_id", "item_id", "rating", "timestamp"]
    users = Vocab.load(tmp_path / "out" / "vocab", "user_id")
    test = pd.read_parquet(tmp_path / "out" / "pairs" / "test.parquet")
    latest = raw.groupby("user_id")["timestamp"].max()
    assert (test["timestamp"].to_numpy() == latest.loc[users.decode(test["user_index"].to_numpy())].to_numpy()).all()
    val = pd.read_parquet(tmp_path / "out" / "pairs" / "val.parquet").set_index("user_index")
    assert (val["timestamp"].loc[test["user_index"]].to_numpy() <= test["timestamp"].to_numpy()).all()
    positives = sum(m.splits[s].positives * m.splits[s].rows for s in m.splits)
    assert round(positives) == int((raw["rating"] >= 4).sum()) == 55_375


def test_ml100k_user_mean_labels_match_a_hand_computation(tmp_path, ml100k_files):
    prepare_movielens("ml-100k", tmp_path / "out", label="user-mean", split="temporal", quiet=True)
    out = tmp_path / "out"
    pairs = {s: pd.read_parquet(out / "pairs" / f"{s}.parquet") for s in ("train", "val", "test")}
    means = pairs["train"].groupby("user_index")["rating"].mean()  # on train rows only: no leakage
    for split, p in pairs.items():
        want = (p["rating"].to_numpy() >= means.loc[p["user_index"]].to_numpy() - 1e-9).astype(np.float32)
        assert (p["label"].to_numpy() == want).all(), split
    user = pairs["train"][pairs["train"]["user_index"] == 1]
    assert 0 < user["label"].mean() < 1
