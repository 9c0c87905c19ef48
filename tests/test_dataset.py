"""The sequential dataset: same rows as RecBole's, cascade labels, whole-sequence mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from recbole.data.dataset import SequentialDataset as RecBoleSequentialDataset

from recbole_oneranker.config import Config
from recbole_oneranker.data import DatasetConfigError, SequentialDataset, create_dataset


def _config(tiny_config, **overrides) -> Config:
    return Config("SASRec", "ml-tiny", config_dict={**tiny_config, **overrides})


def _assert_same_rows(ours, reference) -> None:
    assert set(ours.inter_feat.columns) == set(reference.inter_feat.columns)
    for field in reference.inter_feat.columns:
        torch.testing.assert_close(ours.inter_feat[field], reference.inter_feat[field], rtol=0, atol=0, msg=field)


def test_prefix_rows_match_recbole(tiny_config):
    config = _config(tiny_config, rebase_timestamps=False)
    ours = SequentialDataset(config).build()
    reference = RecBoleSequentialDataset(config).build()
    for our_split, reference_split in zip(ours, reference, strict=True):
        _assert_same_rows(our_split, reference_split)


def test_timestamps_are_rebased_exactly(tiny_config):
    raw = RecBoleSequentialDataset(_config(tiny_config, rebase_timestamps=False)).inter_feat["timestamp"]
    rebased = SequentialDataset(_config(tiny_config)).inter_feat["timestamp"]
    assert rebased.min() == 0
    assert ((rebased + raw.min()) == raw).all()  # still float64 here: exact
    # Once stored as float32: within 1 s (ml-100k spans 7 months; raw Unix seconds would be off by up to 32 s).
    assert (rebased.astype("float32").astype("float64") - rebased).abs().max() <= 1


def test_cascade_and_value_reach_the_batch(tiny_config):
    train, _, _ = SequentialDataset(_config(tiny_config)).build()
    feat = train.inter_feat
    for field in ("click", "conversion", "rating"):
        assert field in feat and f"{field}_list" in feat
    # The history labels are the labels of the history items: check one row by hand.
    row = int(torch.argmax(feat["item_length"]))
    length = int(feat["item_length"][row])
    assert torch.equal(feat["conversion_list"][row, :length], (feat["rating_list"][row, :length] >= 4).float())
    assert feat["conversion_list"][row, length:].abs().sum() == 0  # padding stays zero


def test_cascade_derived_from_thresholds(tiny_config):
    config = _config(tiny_config, cascade_fields=["seen", "liked"], cascade_from="rating", cascade_thresholds=[1, 4])
    feat = SequentialDataset(config).inter_feat  # a DataFrame until build()
    assert (feat["liked"] == (feat["rating"] >= 4)).all()
    assert (feat["seen"] == 1).all()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"cascade_fields": ["nope"]}, "cascade_fields names column 'nope'"),
        ({"cascade_fields": ["rating"]}, "must hold 0/1 labels"),
        ({"cascade_from": "rating", "cascade_thresholds": [4, 1]}, "non-decreasing"),
        ({"value_field": "missing"}, "value_field names column 'missing'"),
    ],
)
def test_bad_cascade_config_is_reported(tiny_config, overrides, message):
    with pytest.raises(DatasetConfigError, match=message):
        SequentialDataset(_config(tiny_config, **overrides))


def test_whole_sequence_one_train_row_per_user_same_eval_rows(tiny_config):
    default = create_dataset(_config(tiny_config)).build()
    whole = create_dataset(_config(tiny_config, whole_sequence=True, whole_sequence_windows=False)).build()

    train_users = whole[0].inter_feat["user_id"].numpy()
    assert len(train_users) == len(np.unique(train_users)) == 60
    for whole_split, default_split in zip(whole[1:], default[1:], strict=True):
        # Same rows; the order of users differs (RecBole orders groups by their first row), which no metric sees.
        whole_split.sort(by="user_id")
        default_split.sort(by="user_id")
        _assert_same_rows(whole_split, default_split)
    # Each user's training row is the longest training prefix of the default mode: it holds all the others.
    default_train = default[0].inter_feat
    last_rows = [int(np.flatnonzero(default_train["user_id"].numpy() == user)[-1]) for user in train_users]
    for field in ("item_id", "item_id_list", "item_length", "conversion_list"):
        assert torch.equal(whole[0].inter_feat[field], default_train[field][last_rows]), field


def _predicted_events(train_feat) -> list[tuple[int, int, float]]:
    """(user, item, time) of each event a whole-sequence row trains on: its history after the first, then its target."""
    events = []
    for user, items, times, length, target, target_time in zip(
        train_feat["user_id"].tolist(),
        train_feat["item_id_list"].tolist(),
        train_feat["timestamp_list"].tolist(),
        train_feat["item_length"].tolist(),
        train_feat["item_id"].tolist(),
        train_feat["timestamp"].tolist(),
        strict=True,
    ):
        events += [(user, item, time) for item, time in zip(items[1:length], times[1:length], strict=True)]
        events.append((user, target, target_time))
    return events


def test_whole_sequence_windows_predict_every_training_event_once(tiny_config):
    max_len = 5  # shorter than every ml-tiny history: several windows per user
    default = create_dataset(_config(tiny_config, MAX_ITEM_LIST_LENGTH=max_len)).build()
    whole = create_dataset(_config(tiny_config, MAX_ITEM_LIST_LENGTH=max_len, whole_sequence=True)).build()
    default_train, windows = default[0].inter_feat, whole[0].inter_feat
    for whole_split, default_split in zip(whole[1:], default[1:], strict=True):
        whole_split.sort(by="user_id")
        default_split.sort(by="user_id")
        _assert_same_rows(whole_split, default_split)

    assert len(windows) > len(np.unique(windows["user_id"].numpy()))  # more than one row per user
    # The default mode's targets are all training events but each user's first; windows predict each one once.
    targets = zip(*(default_train[field].tolist() for field in ("user_id", "item_id", "timestamp")), strict=True)
    assert sorted(_predicted_events(windows)) == sorted(targets)


def test_whole_sequence_needs_leave_one_out(tiny_config):
    config = _config(tiny_config, whole_sequence=True, eval_args={"split": {"RS": [0.8, 0.1, 0.1]}, "order": "TO"})
    with pytest.raises(DatasetConfigError, match="leave-one-out"):
        create_dataset(config)
