"""diagnose repeats: which test targets repeat a history item, and the rows' metrics split by it."""

from __future__ import annotations

import numpy as np
import pytest

from recbole_oneranker.bench.diagnose import repeats_markdown
from recbole_oneranker.bench.repeats import (
    EARLIER,
    LAST,
    NEW,
    HeldOutTargets,
    RepeatShares,
    repeat_shares,
    repeat_targets,
    split_by_repeats,
)
from recbole_oneranker.config import Config
from recbole_oneranker.data import create_dataset

# user -> items in time order; the last is the test target, the one before it the valid target
HISTORIES = {"1": [1, 2, 3, 4, 3], "2": [5, 6, 7, 8, 5], "3": [1, 2, 5, 6, 9], "4": [2, 7, 9, 9]}


@pytest.fixture
def repeat_data(tmp_path):
    (tmp_path / "rep-tiny").mkdir()
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    lines += [f"{user}\t{item}\t{t}" for user, items in HISTORIES.items() for t, item in enumerate(items)]
    (tmp_path / "rep-tiny" / "rep-tiny.inter").write_text("\n".join(lines) + "\n")
    return str(tmp_path)


def test_a_repeat_is_a_target_inside_the_window_the_model_reads(repeat_data):
    settings = {"data_path": repeat_data, "load_col": None, "MAX_ITEM_LIST_LENGTH": 2}
    repeats = repeat_targets("SASRec", "rep-tiny", settings)
    dataset = create_dataset(Config("SASRec", "rep-tiny", None, {**settings, "state": "ERROR"}))
    by_token = {user: repeats.kinds[int(dataset.token2id("user_id", user))] for user in HISTORIES}
    # user 1's 3 is in its last two items (3, 4); user 2's 5 is older than them; user 3's 9 is new; user 4's 9 is
    # the last item it read (its validation target)
    assert by_token == {"1": EARLIER, "2": NEW, "3": NEW, "4": LAST}
    last = repeat_targets("SASRec", "rep-tiny", {**settings, "MAX_ITEM_LIST_LENGTH": 4})
    by_token = {user: last.kinds[int(dataset.token2id("user_id", user))] for user in HISTORIES}
    assert by_token == {"1": EARLIER, "2": EARLIER, "3": NEW, "4": LAST}  # a wider window holds user 2's 5


def test_a_last_history_item_no_training_row_holds_is_unknown(repeat_data):
    settings = {"data_path": repeat_data, "load_col": None, "MAX_ITEM_LIST_LENGTH": 4}
    unknown_last = repeat_targets("SASRec", "rep-tiny", settings).unknown_last
    dataset = create_dataset(Config("SASRec", "rep-tiny", None, {**settings, "state": "ERROR"}))
    # the training rows hold every item but the last two of each user: 1, 2, 3 / 5, 6, 7 / 1, 2, 5 / 2, 7; the test
    # histories end with 4, 8, 6 and 9, of which only user 3's 6 (in user 2's training items) was trained on
    assert unknown_last == {int(dataset.token2id("user_id", user)) for user in ("1", "2", "4")}


def test_split_by_repeats_averages_each_part_per_seed_then_over_seeds(tmp_path):
    repeats = {10: LAST, 11: EARLIER, 12: NEW, 13: NEW}
    rows = []
    for seed, ranks in enumerate([[1, 3, 2, 50], [1, 20, 1, 1]]):
        np.save(tmp_path / f"ranks{seed}.npy", np.array(ranks))
        np.save(tmp_path / f"users{seed}.npy", np.array([10, 11, 12, 13]))
        rows.append(
            {"ranks_file": str(tmp_path / f"ranks{seed}.npy"), "users_file": str(tmp_path / f"users{seed}.npy")}
        )
    split = split_by_repeats(rows, repeats, k=10)
    ndcg = {1: 1.0, 2: 1 / np.log2(3), 3: 0.5}
    assert split["hit_repeat"][0] == pytest.approx((1.0 + 0.5) / 2)
    assert split["ndcg_repeat"][0] == pytest.approx(((ndcg[1] + ndcg[3]) / 2 + ndcg[1] / 2) / 2)
    assert split["ndcg_new"][0] == pytest.approx((ndcg[2] / 2 + 1.0) / 2)
    assert split["hit_all"][0] == pytest.approx((0.75 + 0.75) / 2) and split["hit_all"][1] == 0.0
    assert split["ndcg_last"][0] == pytest.approx(1.0) and split["ndcg_earlier"][0] == pytest.approx(ndcg[3] / 2)


def test_the_report_states_the_shares_of_repeats_and_unknown_last_items():
    split = {
        f"{name}_{part}": (0.5, 0.1) for name in ("ndcg", "hit") for part in ("all", "repeat", "last", "earlier", "new")
    }
    report = repeats_markdown("rep-tiny", RepeatShares(0.585, 0.093, 0.574), [("HSTU", 3, split)], 10, "`cmd`")
    assert "58.5% of the test users' targets" in report
    assert "9.3% of the test histories end with an item no training row holds" in report and "57.4% of those" in report
    assert "| HSTU | 3 | 0.5000 ± 0.1000 |" in report


def test_repeat_shares_count_the_users_and_are_nan_without_any():
    targets = HeldOutTargets({1: LAST, 2: LAST, 3: EARLIER, 4: NEW}, frozenset({2, 4}))
    assert repeat_shares(targets) == RepeatShares(repeat=0.75, unknown_last=0.5, unknown_last_of_last_targets=0.5)
    empty = repeat_shares(HeldOutTargets({}, frozenset()))
    assert all(np.isnan(share) for share in empty)
