"""MovieLens in GroupLens' own release formats: ML-1M (``*.dat``) or ML-100K (``u.*``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from recbole_oneranker.data.converters.base import Converted, Progress, Rows, Table, input_error, read_delimited

# ML-100K's u.item genre flags, in u.genre's order.
GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
INTER_TYPES = {"user_id": "token", "item_id": "token", "rating": "float", "timestamp": "float"}
USER_TYPES = {"user_id": "token", "age": "token", "gender": "token", "occupation": "token", "zip_code": "token"}
ITEM_TYPES = {"item_id": "token", "movie_title": "token_seq", "release_year": "token", "genre": "token_seq"}
ENCODING = "iso-8859-1"  # GroupLens' movie files are Latin-1; the other files are ASCII
_TITLE_YEAR = r"^(?P<title>.*?)\s*\((?P<year>\d{4})\)\s*$"


def convert(src: Path, options: Mapping[str, str], progress: Progress) -> Converted:
    """Convert MovieLens ML-1M or ML-100K, detected from ``ratings.dat`` (ML-1M) or ``u.data`` (ML-100K) in ``src``.

    Sources (no header lines; both releases need all three files):

    - ML-1M: ``ratings.dat`` ``UserID::MovieID::Rating::Timestamp``, ``users.dat``
      ``UserID::Gender::Age::Occupation::Zip-code``, ``movies.dat`` ``MovieID::Title::Genres`` (genres ``|``-separated).
    - ML-100K: ``u.data`` (tab) ``user item rating timestamp``, ``u.user`` ``id|age|gender|occupation|zip``,
      ``u.item`` ``id|title|release date|video release date|IMDb URL|19 genre flags``.

    Output: ``.inter`` ``user_id rating timestamp`` (all ratings, in file order), ``.user`` ``user_id age gender
    occupation zip_code`` and ``.item`` ``item_id movie_title release_year genre``, like RecBole's own MovieLens
    files. Choices: the trailing ``(YYYY)`` of a title becomes ``release_year`` and is cut from ``movie_title``
    (ML-100K titles without one take the year of the release date, else an empty year); ML-1M's age and occupation
    stay GroupLens' numeric codes; the feedback cascade is derived from the rating later by the dataset config, so
    only the rating is written. Default names ``ml-1m`` and ``ml-100k-grouplens`` (RecBole reserves ``ml-100k``
    for its embedded copy).
    """
    if (src / "ratings.dat").is_file():
        return _convert_1m(src, progress)
    if (src / "u.data").is_file():
        return _convert_100k(src, progress)
    raise input_error(src, "no MovieLens ratings: expected ratings.dat (ML-1M) or u.data (ML-100K) in this folder")


def _convert_1m(src: Path, progress: Progress) -> Converted:
    progress.step("reading ML-1M ratings.dat")
    ratings = read_delimited(src / "ratings.dat", "::", ["user_id", "item_id", "rating", "timestamp"], ENCODING)
    progress.step("reading users.dat and movies.dat")
    users = read_delimited(src / "users.dat", "::", ["user_id", "gender", "age", "occupation", "zip_code"], ENCODING)
    movies = read_delimited(src / "movies.dat", "::", ["item_id", "title", "genres"], ENCODING)
    title, year = split_title(movies.frame["title"])
    item = pd.DataFrame(
        {
            "item_id": movies.frame["item_id"],
            "movie_title": title,
            "release_year": year,
            "genre": movies.frame["genres"].str.replace("|", " ", regex=False),
        }
    )
    return Converted(
        default_name="ml-1m",
        inter=_inter(ratings),
        user=Table(users.frame[list(USER_TYPES)], USER_TYPES),
        item=Table(item, ITEM_TYPES),
        labels=("rating",),
    )


def _convert_100k(src: Path, progress: Progress) -> Converted:
    progress.step("reading ML-100K u.data")
    ratings = read_delimited(src / "u.data", "\t", ["user_id", "item_id", "rating", "timestamp"], ENCODING)
    progress.step("reading u.user and u.item")
    users = read_delimited(src / "u.user", "|", list(USER_TYPES), ENCODING)
    item_columns = ["item_id", "title", "release_date", "video_date", "url", *GENRES_100K]
    movies = read_delimited(src / "u.item", "|", item_columns, ENCODING)
    title, year = split_title(movies.frame["title"])
    date_year = movies.frame["release_date"].str.extract(r"(\d{4})\s*$", expand=False).fillna("")
    year = year.where(year != "", date_year)
    item = pd.DataFrame(
        {"item_id": movies.frame["item_id"], "movie_title": title, "release_year": year, "genre": _genres(movies)}
    )
    return Converted(
        default_name="ml-100k-grouplens",
        inter=_inter(ratings),
        user=Table(users.frame, USER_TYPES),
        item=Table(item, ITEM_TYPES),
        labels=("rating",),
    )


def _inter(ratings: Rows) -> Table:
    frame = pd.DataFrame(
        {
            "user_id": ratings.frame["user_id"],
            "item_id": ratings.frame["item_id"],
            "rating": ratings.numbers("rating"),
            "timestamp": ratings.numbers("timestamp"),
        }
    )
    return Table(frame, INTER_TYPES)


def split_title(titles: pd.Series) -> tuple[pd.Series, pd.Series]:
    """``"Toy Story (1995)"`` -> (``"Toy Story"``, ``"1995"``); a title without a trailing year keeps it all."""
    parts = titles.str.extract(_TITLE_YEAR)
    has_year = parts["year"].notna()
    return parts["title"].where(has_year, titles.str.strip()), parts["year"].where(has_year, "")


def _genres(movies: Rows) -> list[str]:
    """ML-100K's 19 genre flags (each 0 or 1) as space-separated genre names."""
    flags = np.column_stack([movies.numbers(genre, integer=True) for genre in GENRES_100K])
    bad_rows = np.flatnonzero(((flags != 0) & (flags != 1)).any(axis=1))
    if bad_rows.size:
        raise movies.fail(int(bad_rows[0]), "genre flags must be 0 or 1")
    names = np.array(GENRES_100K)
    return [" ".join(names[row]) for row in flags.astype(bool)]
