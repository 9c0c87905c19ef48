"""Raw-data converters: every converter on the real shared files, malformed input, atomic output and the CLI.

Expected numbers come from each raw folder's SOURCE.md. A test skips, saying which folder, when the shared data is
absent (``RECBOLE_ONERANKER_DATA`` points elsewhere).
"""

from __future__ import annotations

import csv
import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recbole_oneranker.data import convert as cli
from recbole_oneranker.data.converters import CONVERTERS, ConversionError, Table, convert_dataset, movielens, writer
from recbole_oneranker.data.paths import REPO_ROOT, raw_dataset_dir


def raw(folder: str) -> Path:
    """The shared raw folder, or skip the test when it is absent."""
    path = raw_dataset_dir(folder)
    if not path.is_dir():
        pytest.skip(f"shared raw data folder {path} is absent")
    return path


def read_atomic(path: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """An atomic file as (frame, {column: type}); float columns parsed, token columns kept as exact strings."""
    with path.open(encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n").split("\t")
    types = dict(field.split(":") for field in header)
    frame = pd.read_csv(
        path, sep="\t", skiprows=1, names=list(types), dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE
    )
    for column, kind in types.items():
        if kind == "float":
            frame[column] = frame[column].astype(np.float64)
            assert np.isfinite(frame[column]).all(), f"{path.name}: {column} has NaN or inf"
    return frame, types


def convert(converter: str, out: Path, **kwargs) -> tuple[Path, pd.DataFrame, dict[str, str]]:
    """Run a converter into ``out``; returns the dataset folder and its parsed ``.inter``."""
    summary = convert_dataset(converter, out=out, **kwargs)
    inter, types = read_atomic(summary.path / f"{summary.name}.inter")
    assert len(inter) == summary.rows
    return summary.path, inter, types


def leftovers(out: Path) -> list[str]:
    """Everything inside ``out`` (temporary folders included)."""
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


# --------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def beauty(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """Amazon Beauty converted once per module (the largest conversion here)."""
    src = raw("amazon-s3rec")
    folder, inter, _ = convert("amazon-s3rec", tmp_path_factory.mktemp("beauty"), src=src)
    return folder, inter


@pytest.fixture(scope="module")
def ml100k_src(tmp_path_factory) -> Path:
    """``u.data``/``u.user``/``u.item`` in GroupLens format, rebuilt from the atomic ML-100K copy (users 1-40)."""
    atomic = raw("ml-100k")
    inter = pd.read_csv(atomic / "ml-100k.inter.gz", sep="\t", dtype=str)
    inter.columns = [c.split(":")[0] for c in inter.columns]
    inter = inter[inter["user_id"].astype(int) <= 40]
    users, _ = read_atomic(atomic / "ml-100k.user")
    items, _ = read_atomic(atomic / "ml-100k.item")
    src = tmp_path_factory.mktemp("ml100k")
    inter.to_csv(src / "u.data", sep="\t", header=False, index=False)
    users.to_csv(src / "u.user", sep="|", header=False, index=False)
    lines = []
    for item_id, title, year, genres in items.itertuples(index=False):
        dated = year.isdigit()
        flags = "|".join("1" if g in genres.split() else "0" for g in movielens.GENRES_100K)
        full_title = f"{title} ({year})" if dated else title
        lines.append(f"{item_id}|{full_title}|{'01-Jan-' + year if dated else ''}||http://x|{flags}\n")
    (src / "u.item").write_text("".join(lines), encoding="iso-8859-1")
    return src


@pytest.fixture
def ml1m_src(tmp_path) -> Path:
    """ML-1M with a ``ratings.dat`` made of the 100 genuine rating rows of the torch-rechub sample."""
    shared = raw("ml-1m-partial")
    sample = pd.read_csv(shared / "torchrechub_ml-1m_sample.csv")
    src = tmp_path / "ml-1m"
    src.mkdir()
    rows = sample[["user_id", "movie_id", "rating", "timestamp"]].astype(str).agg("::".join, axis=1)
    (src / "ratings.dat").write_text("\n".join(rows) + "\n")
    for name in ("users.dat", "movies.dat"):
        shutil.copy(shared / name, src / name)
    return src


# ------------------------------------------------------------------------------------------ real-data checks


def test_registry_lists_the_six_converters():
    assert list(CONVERTERS) == ["movielens", "amazon-s3rec", "taobao-userbehavior", "obd", "ali-ccp", "taobao-ad"]
    for spec in CONVERTERS.values():
        assert spec.description and "\n" not in spec.description
        assert spec.convert.__doc__  # every converter documents its source format, output and choices


def test_movielens_1m(ml1m_src, tmp_path):
    sample = pd.read_csv(raw("ml-1m-partial") / "torchrechub_ml-1m_sample.csv")
    folder, inter, types = convert("movielens", tmp_path / "out", src=ml1m_src)
    assert folder.name == "ml-1m"
    assert types == {"user_id": "token", "item_id": "token", "rating": "float", "timestamp": "float"}
    assert len(inter) == 100 and inter["user_id"].nunique() == 2 and inter["item_id"].nunique() == 93
    assert inter["rating"].value_counts().to_dict() == {4: 42, 5: 31, 3: 22, 2: 5}
    assert inter["timestamp"].tolist() == sample["timestamp"].astype(float).tolist()
    users, user_types = read_atomic(folder / "ml-1m.user")
    assert list(user_types) == ["user_id", "age", "gender", "occupation", "zip_code"] and len(users) == 6040
    assert users.iloc[0].tolist() == ["1", "1", "F", "10", "48067"]
    items, item_types = read_atomic(folder / "ml-1m.item")
    assert item_types == {"item_id": "token", "movie_title": "token_seq", "release_year": "token", "genre": "token_seq"}
    assert len(items) == 3883 and (items["release_year"].str.fullmatch(r"\d{4}")).all()
    by_id = items.set_index("item_id")
    assert by_id.loc["1"].tolist() == ["Toy Story", "1995", "Animation Children's Comedy"]
    assert by_id.loc["73", "movie_title"] == "Misérables, Les"  # ISO-8859-1 decoded, written as UTF-8


def test_movielens_100k(ml100k_src, tmp_path):
    atomic = raw("ml-100k")
    folder, inter, _ = convert("movielens", tmp_path / "out", src=ml100k_src)
    assert folder.name == "ml-100k-grouplens"
    source = pd.read_csv(ml100k_src / "u.data", sep="\t", header=None, dtype=str)
    assert inter[["user_id", "item_id"]].values.tolist() == source[[0, 1]].values.tolist()
    assert inter["rating"].tolist() == source[2].astype(float).tolist()
    assert inter["user_id"].nunique() == 40
    users, _ = read_atomic(folder / "ml-100k-grouplens.user")
    expected_users, _ = read_atomic(atomic / "ml-100k.user")
    pd.testing.assert_frame_equal(users, expected_users)
    items, _ = read_atomic(folder / "ml-100k-grouplens.item")
    expected, _ = read_atomic(atomic / "ml-100k.item")
    assert len(items) == 1682
    dated = expected["release_year"].str.fullmatch(r"\d{4}")  # RecBole's copy has "unkonwn"/"V" for two items
    assert dated.sum() == 1680
    assert items[dated].values.tolist() == expected[dated].values.tolist()


def test_movielens_without_ratings_names_the_missing_file(tmp_path):
    with pytest.raises(ConversionError, match=r"ml-1m-partial: no MovieLens ratings: expected ratings\.dat"):
        convert_dataset("movielens", out=tmp_path / "out", src=raw("ml-1m-partial"))
    assert leftovers(tmp_path / "out") == []


def test_amazon_beauty(beauty):
    folder, inter = beauty
    assert folder.name == "beauty"
    assert (len(inter), inter["user_id"].nunique(), inter["item_id"].nunique()) == (198_502, 22_363, 12_101)
    # timestamp = 1-based position in the user's sequence, users in file order
    assert (inter["timestamp"] == inter.groupby("user_id", sort=False).cumcount() + 1).all()
    with gzip.open(raw("amazon-s3rec") / "Beauty.txt.gz", "rt") as handle:
        first = handle.readline().split()
    head = inter.iloc[: len(first) - 1]
    assert (head["user_id"] == first[0]).all() and head["item_id"].tolist() == first[1:]
    items, types = read_atomic(folder / "beauty.item")
    assert types == {"item_id": "token", "attributes": "token_seq"}
    assert len(items) == 12_101 and items.iloc[0].tolist() == ["4", "1 2 3"]


def test_taobao_userbehavior_cumulative_cascade(tmp_path):
    src = raw("taobao-userbehavior-subset")
    folder, inter, types = convert("taobao-userbehavior", tmp_path / "out", src=src)
    assert folder.name == "taobao"
    assert list(types) == ["user_id", "item_id", "category_id", "timestamp", "pv", "fav", "cart", "buy", "value"]
    assert (len(inter), inter["user_id"].nunique(), inter["item_id"].nunique()) == (84_287, 814, 55_233)
    assert inter["category_id"].nunique() == 2_911
    # raw counts pv 75,693 / fav 2,351 / cart 4,494 / buy 1,749, cumulated along pv < fav < cart < buy
    assert inter[["pv", "fav", "cart", "buy"]].sum().to_dict() == {
        "pv": 84_287,
        "fav": 8_594,
        "cart": 6_243,
        "buy": 1_749,
    }
    assert inter["value"].value_counts().sort_index().tolist() == [75_693, 2_351, 4_494, 1_749]
    assert (inter["value"] == inter[["pv", "fav", "cart", "buy"]].sum(axis=1)).all()
    source = pd.read_csv(next(src.glob("UserBehavior*.csv.gz")), header=None, dtype=str)
    source["key"] = source[0].astype(int)
    expected = source.sort_values(["key", 4], key=lambda c: c.astype(int), kind="stable")
    assert inter["item_id"].tolist() == expected[1].tolist()
    assert inter["timestamp"].tolist() == expected[4].astype(float).tolist()


@pytest.mark.parametrize(
    ("policy", "campaign", "name", "items", "clicks"),
    [
        ("random", "all", "obd", 80, 38),
        ("bts", "men", "obd-bts-men", 34, 69),
    ],
)
def test_obd(tmp_path, policy, campaign, name, items, clicks):
    src = raw("obd-small")
    folder, inter, types = convert("obd", tmp_path / "out", src=src, policy=policy, campaign=campaign)
    assert folder.name == name
    assert list(types) == ["user_id", "item_id", "timestamp", "position", "impression", "click", "propensity_score"]
    raw_log = pd.read_csv(src / f"{policy}_{campaign}.csv.gz")
    assert len(inter) == 10_000 and inter["click"].sum() == raw_log["click"].sum() == clicks
    assert (inter["impression"] == 1).all() and set(inter["position"]) == {"1", "2", "3"}
    assert inter["item_id"].nunique() == items
    pseudo = raw_log[[f"user_feature_{k}" for k in range(4)]].astype(str).agg("_".join, axis=1)
    assert inter["user_id"].tolist() == pseudo.tolist()
    expected_time = (pd.to_datetime(raw_log["timestamp"]) - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    np.testing.assert_allclose(inter["timestamp"], expected_time, rtol=0, atol=1e-5)
    assert inter["propensity_score"].tolist() == raw_log["propensity_score"].tolist()
    item, item_types = read_atomic(folder / f"{name}.item")
    assert list(item_types) == ["item_id", "item_feature_0", "item_feature_1", "item_feature_2", "item_feature_3"]
    assert len(item) == items


def test_obd_random_all_users(tmp_path):
    _, inter, _ = convert("obd", tmp_path / "out", src=raw("obd-small"))
    assert inter["user_id"].nunique() == 240


def test_ali_ccp(tmp_path):
    folder, inter, types = convert("ali-ccp", tmp_path / "out", src=raw("ali-ccp-sample"))
    assert folder.name == "ali-ccp"
    assert list(types)[:6] == ["user_id", "item_id", "timestamp", "impression", "click", "conversion"]
    assert types["f121"] == "token" and types["f109_14"] == "token" and types["D853"] == "float"
    assert "f101" not in types and "f205" not in types and "purchase" not in types
    assert len(inter) == 200 and inter["timestamp"].tolist() == list(range(1, 201))
    assert (inter["impression"] == 1).all()
    parts = [inter.iloc[:100], inter.iloc[100:150], inter.iloc[150:]]  # train, val, test
    assert [p["click"].sum() for p in parts] == [7, 3, 2] and [p["conversion"].sum() for p in parts] == [1, 1, 1]
    assert inter["user_id"].nunique() == 1 and inter["item_id"].nunique() == 120  # the sample's 101 is constant


def test_taobao_ad(tmp_path):
    folder, inter, types = convert("taobao-ad", tmp_path / "out", src=raw("taobao-ad-sample"))
    assert folder.name == "taobao-ad"
    assert list(types) == ["user_id", "item_id", "timestamp", "impression", "click", "value", "pid"]
    assert len(inter) == 200 and inter.iloc[:100]["click"].sum() == 4 and inter["click"].sum() == 8
    assert (inter["user_id"].nunique(), inter["item_id"].nunique()) == (24, 99)
    assert inter["timestamp"].min() == 1494028800  # 2017-05-06 00:00:00 UTC
    assert inter.iloc[0][["user_id", "item_id", "value", "pid"]].tolist() == ["874257", "172298", 3.9, "430548_1007"]
    items, item_types = read_atomic(folder / "taobao-ad.item")
    assert list(item_types) == ["item_id", "cate_id", "campaign_id", "customer", "brand", "price"]
    assert len(items) == 99 and items["item_id"].is_unique
    assert items.set_index("item_id").loc["170301", "price"] == 858.0  # first occurrence wins
    users, user_types = read_atomic(folder / "taobao-ad.user")
    assert len(users) == 24 and len(user_types) == 9
    assert (users["new_user_class_level"] == "").all() and not users.isin(["nan", "NaN", "None"]).any().any()


# ------------------------------------------------------------------------------------------- malformed input

TAOBAO_ROWS = ["1,10,100,pv,1511544070", "1,11,100,buy,1511544080", "2,12,101,cart,1511544090"]


def taobao_src(tmp_path: Path, lines: list[str], name: str = "UserBehavior.csv") -> Path:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / name).write_text("".join(line + "\n" for line in lines))
    return src


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            TAOBAO_ROWS[:2] + ["2,12,101,cart"],
            r"UserBehavior\.csv, line 3: expected 5 fields separated by ',', found 4",
        ),
        (TAOBAO_ROWS[:1] + ["1,11,100,buy,yesterday"], r"line 2: column 'timestamp' must be a number, got 'yesterday'"),
        (
            TAOBAO_ROWS[:1] + ["", "1,11,100,click,1"],
            r"line 3: column 'behavior_type' must be one of pv, fav, cart, buy",
        ),
        ([], r"UserBehavior\.csv: file is empty"),
    ],
)
def test_taobao_malformed_rows(tmp_path, lines, message):
    out = tmp_path / "out"
    with pytest.raises(ConversionError, match=message):
        convert_dataset("taobao-userbehavior", src=taobao_src(tmp_path, lines), out=out)
    assert leftovers(out) == []


def test_taobao_accepts_gzip_and_needs_one_file(tmp_path):
    src = taobao_src(tmp_path, TAOBAO_ROWS)
    with gzip.open(src / "UserBehavior_b.csv.gz", "wt") as handle:
        handle.write("\n".join(TAOBAO_ROWS))
    with pytest.raises(ConversionError, match="2 UserBehavior"):
        convert_dataset("taobao-userbehavior", src=src, out=tmp_path / "out")
    summary = convert_dataset("taobao-userbehavior", src=src, out=tmp_path / "out", file="UserBehavior_b.csv.gz")
    assert summary.rows == 3 and summary.labels == {"pv": 3, "fav": 2, "cart": 2, "buy": 1}


def test_obd_missing_column_and_missing_file(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    log = pd.read_csv(raw("obd-small") / "random_all.csv.gz", nrows=5)
    log.drop(columns="click").to_csv(src / "random_all.csv", index=False)
    with pytest.raises(ConversionError, match=r"random_all\.csv, line 1: missing column\(s\) 'click'"):
        convert_dataset("obd", src=src, out=tmp_path / "out")
    log.to_csv(src / "random_all.csv", index=False)
    with pytest.raises(ConversionError, match=r"item_context_random_all\.csv: file not found"):
        convert_dataset("obd", src=src, out=tmp_path / "out")
    assert leftovers(tmp_path / "out") == []


def test_amazon_malformed(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "Toys_item2attributes.json").write_text('{"1": [3], "2": [4, 5]}')
    (src / "Toys.txt").write_text("1 1 2\n2\n")
    with pytest.raises(ConversionError, match=r"Toys\.txt, line 2: expected a user id followed by at least one"):
        convert_dataset("amazon-s3rec", src=src, out=tmp_path / "out", category="Toys")
    (src / "Toys.txt").write_text("1 1 2\n2 2 1\n1 2\n")
    with pytest.raises(ConversionError, match=r"Toys\.txt, line 3: user '1' already has a line"):
        convert_dataset("amazon-s3rec", src=src, out=tmp_path / "out", category="Toys")
    (src / "Toys.txt").write_text("1 1 2\n2 2 1 2\n")
    summary = convert_dataset("amazon-s3rec", src=src, out=tmp_path / "out", category="Toys")
    inter, _ = read_atomic(summary.path / "toys.inter")
    assert inter.values.tolist() == [["1", "1", 1], ["1", "2", 2], ["2", "2", 1], ["2", "1", 2], ["2", "2", 3]]


def test_ali_ccp_and_taobao_ad_bad_values(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(raw("ali-ccp-sample"), src)
    lines = (src / "ali_ccp_val_sample.csv").read_text().splitlines()
    lines[4] = "x" + lines[4][1:]
    (src / "ali_ccp_val_sample.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ConversionError, match=r"ali_ccp_val_sample\.csv, line 5: column 'click' must be a number"):
        convert_dataset("ali-ccp", src=src, out=tmp_path / "out")
    shutil.copy(raw("taobao-ad-sample") / "fuxictr_tiny_csv_test_sample.csv", src / "ad.csv")
    lines = (src / "ad.csv").read_text().splitlines()
    fields = lines[7].split(",")
    lines[7] = ",".join([fields[0], "someday", *fields[2:]])
    (src / "ad.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ConversionError, match=r"ad\.csv, line 8: column 'time_stamp' must be a date-time"):
        convert_dataset("taobao-ad", src=src, out=tmp_path / "out", files="ad.csv")
    assert leftovers(tmp_path / "out") == []


def test_movielens_100k_bad_item_line(ml100k_src, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ml100k_src, src)
    lines = (src / "u.item").read_text(encoding="iso-8859-1").splitlines()
    lines[9] = lines[9].rsplit("|", 1)[0]  # drop the last genre flag
    (src / "u.item").write_text("\n".join(lines) + "\n", encoding="iso-8859-1")
    with pytest.raises(ConversionError, match=r"u\.item, line 10: expected 24 fields separated by '\|', found 23"):
        convert_dataset("movielens", src=src, out=tmp_path / "out")


# ------------------------------------------------------------------------------------- all-or-nothing output


def test_output_replaces_older_and_failures_leave_nothing(tmp_path, monkeypatch):
    src = raw("taobao-ad-sample")
    out = tmp_path / "out"
    (out / "taobao-ad").mkdir(parents=True)
    (out / "taobao-ad" / "stale.txt").write_text("old")
    convert_dataset("taobao-ad", src=src, out=out)
    assert leftovers(out) == ["taobao-ad"]
    assert sorted(p.name for p in (out / "taobao-ad").iterdir()) == [
        "taobao-ad.inter",
        "taobao-ad.item",
        "taobao-ad.user",
    ]
    written = []

    def failing_write(table, path):  # the disk fills up on the second file
        if written:
            raise OSError(28, "No space left on device")
        written.append(path)
        path.write_text("partial")

    monkeypatch.setattr(writer, "write_table", failing_write)
    with pytest.raises(ConversionError, match="No space left on device"):
        convert_dataset("taobao-ad", src=src, out=out, name="fresh")
    with pytest.raises(ConversionError, match="No space left on device"):
        convert_dataset("taobao-ad", src=src, out=out)
    assert leftovers(out) == ["taobao-ad"]  # no temporary folder, no "fresh", the older output intact
    assert (out / "taobao-ad" / "taobao-ad.inter").stat().st_size > 1000


def test_writer_cleans_tokens_and_refuses_nan(tmp_path):
    frame = pd.DataFrame(
        {"user_id": ['"a"\tb', "c\nd"], "title": ["  x \t y ", "z"], "score": [1.0, 2.5], "n": [3.0, 4.0]}
    )
    table = Table(frame, {"user_id": "token", "title": "token_seq", "score": "float", "n": "float"})
    writer.write_table(table, tmp_path / "t.inter")
    lines = (tmp_path / "t.inter").read_text().splitlines()
    assert lines == ["user_id:token\ttitle:token_seq\tscore:float\tn:float", "a b\tx y\t1.0\t3", "c d\tz\t2.5\t4"]
    frame.loc[1, "score"] = np.nan
    with pytest.raises(ValueError, match="score"):
        writer.write_table(table, tmp_path / "t.inter")


# ------------------------------------------------------------------------------------------------ command line


def test_cli_list_and_convert(tmp_path, capsys):
    assert cli.main(["--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == list(CONVERTERS)
    src = raw("ali-ccp-sample")
    assert cli.main(["ali-ccp", "--src", str(src), "--out", str(tmp_path), "--name", "ccp", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {tmp_path / 'ccp'}" in printed and "interactions: 200" in printed
    assert "labels: impression: 200; click: 12; conversion: 3" in printed


def test_cli_error_is_one_line_and_exit_2(tmp_path):
    src = taobao_src(tmp_path, TAOBAO_ROWS[:2] + ["2,12,101,cart"])
    paths = [str(REPO_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    command = [sys.executable, "-m", "recbole_oneranker.data.convert", "taobao-userbehavior"]
    result = subprocess.run(
        [*command, "--src", str(src), "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert "UserBehavior.csv, line 3: expected 5 fields" in result.stderr
    assert leftovers(tmp_path / "out") == []


# ------------------------------------------------------------------------------------------- RecBole parses it


@pytest.mark.parametrize("converter", ["taobao-ad", "movielens"])
def test_recbole_loads_the_atomic_files(tmp_path, request, converter):
    from recbole.config import Config
    from recbole.data import create_dataset

    src = request.getfixturevalue("ml100k_src") if converter == "movielens" else raw("taobao-ad-sample")
    summary = convert_dataset(converter, src=src, out=tmp_path / "data")
    config_dict = {
        "data_path": str(tmp_path / "data"),
        "load_col": None,
        "train_neg_sample_args": None,
        "show_progress": False,
        "state": "ERROR",
    }
    dataset = create_dataset(Config(model="Pop", dataset=summary.name, config_dict=config_dict))
    assert dataset.inter_num == summary.rows
    if converter == "movielens":  # the .user/.item files list every user and movie, not only the 40 users rated
        assert (dataset.user_num, dataset.item_num) == (943 + 1, 1682 + 1)  # id 0 is padding
        assert dataset.field2type["movie_title"].value == "token_seq" and len(dataset.item_feat) == 1683
    else:
        assert (dataset.user_num, dataset.item_num) == (summary.users + 1, summary.items + 1)
        assert len(dataset.user_feat) == 25 and dataset.field2type["pvalue_level"].value == "token"


def test_a_killed_conversions_folders_are_removed_by_the_next(tmp_path):
    out = tmp_path / "out"
    abandoned = [out / ".taobao.tmp-999999999-0abc", out / ".taobao.old-999999999-0abc"]  # no such process
    live = out / f".taobao.tmp-{os.getpid()}-0abc"  # a conversion still running
    for folder in [*abandoned, live]:
        folder.mkdir(parents=True)
    convert_dataset("taobao-userbehavior", src=taobao_src(tmp_path, TAOBAO_ROWS), out=out)
    assert leftovers(out) == [live.name, "taobao"]


def test_the_dataset_folder_honours_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        convert_dataset("taobao-userbehavior", src=taobao_src(tmp_path, TAOBAO_ROWS), out=tmp_path / "out")
    finally:
        os.umask(previous)
    assert (tmp_path / "out" / "taobao").stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (TAOBAO_ROWS[0].encode() + b"\n1,11,\xff,buy,1\n", r"line 2: not utf-8 text: invalid start byte \(byte 0xff\)"),
        (TAOBAO_ROWS[0].encode() + b"\n1,1\x001,100,buy,1\n", r"line 2: a NUL byte"),
        (f"{TAOBAO_ROWS[0]}\n1,11,100,buy,{'9x' * 50_000}\n".encode(), r"got '9x9x9x.*\.\.\. \(100,002 characters\)$"),
    ],
)
def test_bytes_and_long_values_are_named_by_line_and_cut(tmp_path, content, message):
    src = tmp_path / "src"
    src.mkdir()
    (src / "UserBehavior.csv").write_bytes(content)
    with pytest.raises(ConversionError, match=message) as raised:
        convert_dataset("taobao-userbehavior", src=src, out=tmp_path / "out")
    assert len(str(raised.value)) < 300
