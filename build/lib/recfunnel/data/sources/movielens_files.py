"""Readers of the MovieLens releases' own files, each into an :class:`InteractionData`.

=================  =========================================================================
ml-100k (RecBole)  ``ml-100k.inter/.user/.item``: tab-separated, header ``name:type``, UTF-8
ml-100k (original) ``u.data`` (tab), ``u.user``, ``u.item`` (``|``, latin-1, 19 genre flags)
ml-1m              ``ratings.dat``, ``users.dat``, ``movies.dat``: ``::``-separated, latin-1
ml-latest(-small)  ``ratings.csv`` (userId,movieId,rating,timestamp), ``movies.csv``
sets               ``item_ratings.csv`` (userId = hash string, movieId, rating, tstamp = date
                   time), and ``movies.csv`` when present
=================  =========================================================================

Features kept: users' ``age`` (dense, years; ml-100k only), ``age_bucket`` (ml-1m's age codes;
ml-100k ages are bucketed the same way), ``gender``, ``occupation``, ``zip_prefix`` (first
character of the zip code); items' ``genres`` (multi-hot) and ``year`` (dense; unparseable years,
e.g. ml-100k's "unkonwn", are missing and become the mean).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from recfunnel.data.prepare.columns import Table, file_record, read_csv_table, require_columns, to_numbers
from recfunnel.data.prepare.tables import Feature, InteractionData
from recfunnel.errors import DataError

__all__ = ["VARIANT_FILES", "read_variant", "find_files"]

# Files of each variant (alternatives: the first complete set found is read). sets' movies.csv is optional.
VARIANT_FILES: dict[str, list[tuple[str, ...]]] = {
    "ml-100k": [("u.data", "u.user", "u.item"), ("ml-100k.inter", "ml-100k.user", "ml-100k.item")],
    "ml-1m": [("ratings.dat", "users.dat", "movies.dat")],
    "ml-latest": [("ratings.csv", "movies.csv")],
    "ml-latest-small": [("ratings.csv", "movies.csv")],
    "sets": [("item_ratings.csv",)],
}
ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
AGE_EDGES, AGE_CODES = [18, 25, 35, 45, 50, 56], np.array([1, 18, 25, 35, 45, 50, 56])  # ml-1m's buckets
USER_FEATURES = [
    Feature("gender", "categorical", "user"),
    Feature("occupation", "categorical", "user"),
    Feature("zip_prefix", "categorical", "user"),
    Feature("age_bucket", "categorical", "user"),
]
ITEM_FEATURES = [Feature("genres", "multi_hot", "item"), Feature("year", "dense", "item", missing_ok=True)]


def find_files(variant: str, folder: Path) -> list[Path]:
    """The variant's files in ``folder`` (or ``folder/<variant>``); a folder lacking them raises."""
    for base in (folder, folder / variant):
        for names in VARIANT_FILES[variant]:
            if all((base / n).is_file() for n in names):
                extra = [base / "movies.csv"] if variant == "sets" and (base / "movies.csv").is_file() else []
                return [base / n for n in names] + extra
    if not folder.is_dir():
        raise DataError(f"--source {folder}: no such folder")
    wanted = " or ".join(", ".join(names) for names in VARIANT_FILES[variant])
    found = ", ".join(sorted(p.name for p in folder.iterdir())[:12]) or "nothing"
    raise DataError(f"--source {folder}: no MovieLens {variant} files (expected {wanted}; found {found})")


def read_variant(variant: str, files: list[Path]) -> InteractionData:
    names = [f.name for f in files]
    if variant == "ml-100k":
        data = _ml100k_atomic(*files) if names[0].endswith(".inter") else _ml100k_original(*files)
    elif variant == "ml-1m":
        data = _ml1m(*files)
    elif variant == "sets":
        data = _sets(files[0], files[1] if len(files) > 1 else None)
    else:
        data = _latest(*files)
    data.source = {"kind": "movielens", "variant": variant, "files": [file_record(f) for f in files]}
    data.numeric_ids = ("item_id",) if variant == "sets" else ("user_id", "item_id")  # sets: users are hashes
    return data


def _ml100k_atomic(inter: Path, user: Path, item: Path) -> InteractionData:
    """RecBole's atomic files: header fields are ``name:type``."""
    t_inter, t_user, t_item = (_atomic(p) for p in (inter, user, item))
    require_columns(t_inter, ["user_id", "item_id", "rating", "timestamp"], "user_id, item_id, rating, timestamp")
    require_columns(
        t_user, ["user_id", "age", "gender", "occupation", "zip_code"], "user_id, age, gender, occupation, zip_code"
    )
    require_columns(
        t_item, ["item_id", "movie_title", "release_year", "class"], "item_id, movie_title, release_year, class"
    )
    t_item.rename({"movie_title": "title"})
    items = t_item.frame
    items["genres"] = items["class"].astype(str).str.split()
    items["year"] = pd.to_numeric(items["release_year"], errors="coerce")
    return _ml100k(t_inter, t_user, Table(t_item.name, items[["item_id", "title", "genres", "year"]]))


def _atomic(path: Path) -> Table:
    table = read_csv_table(path, sep="\t", quoting=csv.QUOTE_NONE)
    table.frame.columns = [str(c).split(":")[0] for c in table.frame.columns]
    return table


def _ml100k_original(data: Path, user: Path, item: Path) -> InteractionData:
    t_inter = read_csv_table(
        data, sep="\t", header=False, names=["user_id", "item_id", "rating", "timestamp"], quoting=csv.QUOTE_NONE
    )
    t_user = read_csv_table(
        user,
        sep="|",
        header=False,
        names=["user_id", "age", "gender", "occupation", "zip_code"],
        quoting=csv.QUOTE_NONE,
        encoding="latin-1",
        dtype={"zip_code": str},
    )
    names = ["item_id", "title", "release_date", "video_date", "url", *ML100K_GENRES]
    t_item = read_csv_table(item, sep="|", header=False, names=names, quoting=csv.QUOTE_NONE, encoding="latin-1")
    items = t_item.frame
    flags = items[list(ML100K_GENRES)].apply(pd.to_numeric, errors="coerce").fillna(0).to_numpy() > 0
    rows, cols = np.nonzero(flags)  # row-major: each movie's genres in the file's column order
    genres = pd.Series(np.array(ML100K_GENRES, dtype=object)[cols]).groupby(rows).agg(list)
    items["genres"] = genres.reindex(range(len(items))).to_numpy()
    date_year = pd.to_numeric(items["release_date"].astype(str).str[-4:], errors="coerce")
    items["year"] = date_year.fillna(_title_year(items["title"])).to_numpy()
    return _ml100k(t_inter, t_user, Table(t_item.name, items[["item_id", "title", "genres", "year"]]))


def _ml100k(t_inter: Table, t_user: Table, t_item: Table) -> InteractionData:
    """Shared by both ml-100k layouts: ages in years -> dense ``age`` and ml-1m's ``age_bucket``."""
    users = t_user.frame
    users["zip_prefix"] = users["zip_code"].astype(str).str[:1]
    age = pd.to_numeric(users["age"], errors="coerce")  # text ages are reported by tabular's check of "age"
    users["age_bucket"] = AGE_CODES[np.digitize(age.fillna(0), AGE_EDGES)]
    users = users[["user_id", "age", "age_bucket", "gender", "occupation", "zip_prefix"]]
    features = [Feature("age", "dense", "user")] + USER_FEATURES + ITEM_FEATURES
    return InteractionData(t_inter, Table(t_user.name, users), t_item, features, rating_range=(1, 5), rating_step=1)


def _ml1m(ratings: Path, users: Path, movies: Path) -> InteractionData:
    t_inter = _dat(ratings, ["user_id", "item_id", "rating", "timestamp"])
    t_user = _dat(users, ["user_id", "gender", "age_bucket", "occupation", "zip_code"], zip_code=str)
    t_user.frame["zip_prefix"] = t_user.frame["zip_code"].astype(str).str[:1]
    t_item = _movies_dat(movies)
    return InteractionData(t_inter, t_user, t_item, USER_FEATURES + ITEM_FEATURES, rating_range=(1, 5), rating_step=1)


def _dat(path: Path, names: list[str], **dtypes: type) -> Table:
    """A ``::``-separated file without ``:`` inside fields, read by the fast C parser split on ``:``."""
    fields = 2 * len(names) - 1
    dtype = {2 * names.index(k): v for k, v in dtypes.items()}
    table = read_csv_table(path, sep=":", header=False, encoding="latin-1", quoting=csv.QUOTE_NONE, dtype=dtype)
    frame = table.frame
    gaps = frame.columns[1::2]
    if len(frame.columns) != fields or frame[gaps].notna().to_numpy().any():
        raise DataError(f"{path.name}: expected {len(names)} '::'-separated fields per line ({'::'.join(names)})")
    frame = frame[frame.columns[0::2]]
    frame.columns = names
    return Table(path.name, frame)


def _movies_dat(path: Path) -> Table:
    """``MovieID::Title::Genres``; titles may hold ``:`` so lines are split on ``::`` (movies are few)."""
    table = read_csv_table(path, sep="\x1f", header=False, names=["line"], encoding="latin-1", quoting=csv.QUOTE_NONE)
    parts = table.frame["line"].astype(str).str.split("::", n=2, expand=True)
    if parts.shape[1] != 3 or parts[2].isna().any():
        pos = int(np.flatnonzero(parts[parts.columns[-1]].isna().to_numpy())[0]) if parts.shape[1] == 3 else 0
        raise DataError(f"{table.at(pos)}: expected 3 '::'-separated fields (MovieID::Title::Genres)")
    frame = pd.DataFrame({"item_id": parts[0].to_numpy(), "title": parts[1].to_numpy()}, index=table.frame.index)
    frame["item_id"] = to_numbers(Table(path.name, frame), "item_id")  # text ids would not match ratings.dat
    frame["genres"] = _genre_lists(parts[2])
    frame["year"] = _title_year(frame["title"]).to_numpy()
    return Table(path.name, frame)


def _latest(ratings: Path, movies: Path) -> InteractionData:
    t_inter = read_csv_table(ratings)
    require_columns(t_inter, ["userId", "movieId", "rating", "timestamp"], "userId, movieId, rating, timestamp")
    t_inter.rename({"userId": "user_id", "movieId": "item_id"})
    t_item = _movies_csv(movies)
    return InteractionData(t_inter, None, t_item, ITEM_FEATURES, rating_range=(0.5, 5), rating_step=0.5)


def _sets(ratings: Path, movies: Path | None) -> InteractionData:
    t_inter = read_csv_table(ratings, dtype={"userId": str})
    require_columns(t_inter, ["userId", "movieId", "rating", "tstamp"], "userId, movieId, rating, tstamp")
    t_inter.rename({"userId": "user_id", "movieId": "item_id", "tstamp": "timestamp"})
    t_item = _movies_csv(movies) if movies is not None else None
    return InteractionData(t_inter, None, t_item, ITEM_FEATURES if t_item is not None else [], rating_range=(0.5, 5))


def _movies_csv(path: Path) -> Table:
    """``movieId,title,genres`` with ``|``-separated genres; "(no genres listed)" is no genre."""
    table = read_csv_table(path)
    require_columns(table, ["movieId", "title", "genres"], "movieId, title, genres")
    table.rename({"movieId": "item_id"})
    frame = table.frame
    frame["genres"] = _genre_lists(frame["genres"].astype(str).replace("(no genres listed)", ""))
    frame["year"] = _title_year(frame["title"]).to_numpy()
    return Table(path.name, frame[["item_id", "title", "genres", "year"]], aliases=table.aliases)


def _genre_lists(genres: pd.Series) -> np.ndarray:
    """``"A|B"`` -> ``["A", "B"]``; empty -> ``[]`` (object (n,) of lists)."""
    return genres.fillna("").astype(str).str.split("|").to_numpy(dtype=object)


def _title_year(titles: pd.Series) -> pd.Series:
    """The year in a title's trailing ``(1995)``, float64 (n,); NaN when there is none."""
    year = titles.astype(str).str.extract(r"\((\d{4})\)\s*$", expand=False)
    return pd.to_numeric(year, errors="coerce").astype(np.float64)
