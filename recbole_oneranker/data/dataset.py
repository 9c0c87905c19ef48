"""``SequentialDataset``: RecBole's sequential dataset with feedback cascades, vectorised prefixes and whole sequences.

Three additions to ``recbole.data.dataset.SequentialDataset``, all driven by config keys (``properties/overall.yaml``):

- **Cascade labels.** ``cascade_fields`` names the 0/1 task labels of an interaction, ordered from interest to
  value (impression -> click -> conversion). They are read from the ``.inter`` file, or derived from a numeric column
  (``cascade_from`` + ``cascade_thresholds``, e.g. MovieLens ratings). Like every inter column they reach the model
  as ``<field>`` (the target's label) and ``<field>_list`` (the history's labels); so does ``value_field``.
- **Precise times.** Timestamps count from the dataset's first event (``rebase_timestamps``), so that RecBole's
  float32 storage keeps them to a second or two instead of 64 s.
- **Vectorised prefixes.** RecBole turns every interaction after a user's first into a (history, target) row with a
  Python loop over rows; here the same rows are built with array indexing. The output is identical.
- **Whole sequences** (``whole_sequence: True``). A generative model trains on all positions of one sequence, so
  only the last prefixes of each user are kept: the longest training prefix plus the valid/test rows. RecBole's
  leave-one-out split then yields one training row per user, and the very same valid/test rows as the default mode.
  A training history longer than ``MAX_ITEM_LIST_LENGTH`` (L) also keeps the prefixes ending L, 2L, ... targets
  earlier (``whole_sequence_windows: True``): consecutive windows of the history, so every training interaction
  but a user's first is predicted exactly once, as in the one-row-per-prefix mode, instead of only the last L.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from recbole.data.dataset import SequentialDataset as RecBoleSequentialDataset
from recbole.data.interaction import Interaction
from recbole.utils import FeatureSource, FeatureType

from recbole_oneranker.errors import ConfigError

# Rows each user keeps after its training prefix in whole-sequence mode, per leave-one-out mode.
_HELD_OUT_ROWS = {"valid_and_test": 2, "valid_only": 1, "test_only": 1}


class DatasetConfigError(ConfigError):
    """A dataset config that does not match the data (missing column, bad labels, wrong split for a mode)."""


def items_held(dataset) -> torch.Tensor:
    """``[item_num]`` bool: the items some row of a sequential ``dataset`` (a split) holds, as its target or in its
    history; the padding item 0 never. On the training split: the items a model can have learned anything of."""
    items = dataset.iid_field
    held = torch.zeros(dataset.item_num, dtype=torch.bool)
    held[dataset.inter_feat[items].long()] = True
    held[dataset.inter_feat[items + dataset.config["LIST_SUFFIX"]].long().flatten()] = True
    held[0] = False
    return held


class SequentialDataset(RecBoleSequentialDataset):
    """Sequential dataset used for every sequential model run through this package (see the module docstring)."""

    def __init__(self, config):
        self.cascade_fields = list(config["cascade_fields"] or [])
        self.value_field = config["value_field"]
        self.whole_sequence = bool(config["whole_sequence"])
        self.whole_sequence_windows = bool(config["whole_sequence_windows"])
        if self.whole_sequence:
            self._rows_kept_per_user = self._whole_sequence_rows(config["eval_args"]["split"])
        super().__init__(config)

    @staticmethod
    def _whole_sequence_rows(split) -> int:
        """Rows each user keeps in whole-sequence mode: the longest training prefix plus the held-out rows."""
        mode = split.get("LS") if isinstance(split, dict) else None
        if mode not in _HELD_OUT_ROWS:
            raise DatasetConfigError(
                f"whole_sequence needs a leave-one-out split (eval_args.split: {{LS: valid_and_test}}), got {split}"
            )
        return _HELD_OUT_ROWS[mode] + 1

    # -- cascade and value ------------------------------------------------------------------------------------

    def _data_processing(self):
        if self.time_field not in self.inter_feat:  # RecBole's sort fails on it later, with the whole batch printed
            raise DatasetConfigError(
                f"time field '{self.time_field}' is not loaded from {self.dataset_name}.inter, and sequential models "
                f"order each user's history by it: add it to load_col (inter), or load every column with load_col: ~"
            )
        self._rebase_timestamps()
        self._prepare_cascade()
        self._check_value_field()
        super()._data_processing()

    def _rebase_timestamps(self) -> None:
        """Count time from the dataset's first event: float32 (RecBole's float type) rounds Unix seconds to 64 s,
        but rebased times to 1 s over the first 194 days (2 s up to 388). Only order and gaps are used downstream."""
        if self.config["rebase_timestamps"] and self.time_field in self.inter_feat:
            times = self.inter_feat[self.time_field]
            self.inter_feat[self.time_field] = times - times.min()

    def _prepare_cascade(self) -> None:
        source = self.config["cascade_from"]
        if source is None:
            for field in self.cascade_fields:
                self._check_inter_column(field, "cascade_fields")
                labels = self.inter_feat[field]
                if not labels.isin([0, 1]).all():
                    raise DatasetConfigError(f"cascade field '{field}' must hold 0/1 labels")
            return
        thresholds = list(self.config["cascade_thresholds"] or [])
        if len(thresholds) != len(self.cascade_fields) or thresholds != sorted(thresholds):
            raise DatasetConfigError(
                f"cascade_thresholds {thresholds} must give one non-decreasing threshold per cascade field "
                f"{self.cascade_fields}"
            )
        self._check_inter_column(source, "cascade_from")
        values = self.inter_feat[source].to_numpy(dtype=np.float64)
        for field, threshold in zip(self.cascade_fields, thresholds, strict=True):
            self.inter_feat[field] = (values >= threshold).astype(np.float32)
            self.set_field_property(field, FeatureType.FLOAT, FeatureSource.INTERACTION, 1)

    def _check_value_field(self) -> None:
        if self.value_field is not None:
            self._check_inter_column(self.value_field, "value_field")
            if self.field2type[self.value_field] != FeatureType.FLOAT:
                raise DatasetConfigError(f"value_field '{self.value_field}' must be a float column")

    def _check_inter_column(self, field: str, key: str) -> None:
        if self.inter_feat is None or field not in self.inter_feat:
            loaded = [] if self.inter_feat is None else list(self.inter_feat.columns)
            raise DatasetConfigError(
                f"{key} names column '{field}', which is not in {self.dataset_name}.inter as loaded "
                f"(loaded columns: {', '.join(loaded)}; check load_col)"
            )
        if not pd.api.types.is_numeric_dtype(self.inter_feat[field]):
            raise DatasetConfigError(f"{key} column '{field}' must be numeric")

    # -- prefixes ---------------------------------------------------------------------------------------------

    def data_augmentation(self):
        """Build (history, target) rows for every interaction but each user's first, as RecBole does, vectorised.

        Row for target position i of a user whose interactions start at s: history = positions
        max(s, i - L) .. i - 1 (L = MAX_ITEM_LIST_LENGTH), right-padded with zeros to L.
        """
        self._aug_presets()
        self._check_field("uid_field", "time_field")
        self.sort(by=[self.uid_field, self.time_field], ascending=True)

        user_ids = self.inter_feat[self.uid_field].numpy()
        n_rows = len(user_ids)
        is_first = np.ones(n_rows, dtype=bool)
        is_first[1:] = user_ids[1:] != user_ids[:-1]
        user_start = np.maximum.accumulate(np.where(is_first, np.arange(n_rows), 0))  # [n_rows]

        max_len = self.max_item_list_len
        target_index = np.flatnonzero(~is_first)
        if self.whole_sequence:
            target_index = target_index[self._whole_sequence_rows_mask(user_ids[target_index], max_len)]

        history_start = np.maximum(user_start[target_index], target_index - max_len)  # [R]
        history_length = target_index - history_start  # [R], in 1..L
        offsets = np.arange(max_len)
        in_history = offsets[None, :] < history_length[:, None]  # [R, L]
        history_index = torch.from_numpy(np.where(in_history, history_start[:, None] + offsets[None, :], 0))
        in_history = torch.from_numpy(in_history)

        new_data = self.inter_feat[target_index]
        new_dict = {self.item_list_length_field: torch.from_numpy(history_length.astype(np.int64))}
        for field in self.inter_feat:
            if field == self.uid_field:
                continue
            values = self.inter_feat[field][history_index]  # [R, L, ...]
            mask = in_history.reshape(in_history.shape + (1,) * (values.dim() - 2))
            new_dict[getattr(self, f"{field}_list_field")] = values * mask.to(values.dtype)
        new_data.update(Interaction(new_dict))
        self.inter_feat = new_data

    def _whole_sequence_rows_mask(self, row_users: np.ndarray, window: int) -> np.ndarray:
        """Mask of the prefix rows kept in whole-sequence mode: each user's held-out rows and longest training
        prefix, plus, with ``whole_sequence_windows``, the training prefixes ``window``, ``2 * window``, ... rows
        before it (each row trains on the ``window`` targets that end it, so together they cover every target)."""
        # Rank of each row from the end of its user's block (rows are sorted by user, then time): 0 = the last.
        is_last = np.ones(len(row_users), dtype=bool)
        is_last[:-1] = row_users[:-1] != row_users[1:]
        block_end = np.minimum.accumulate(np.where(is_last, np.arange(len(row_users)), len(row_users))[::-1])[::-1]
        rank = block_end - np.arange(len(row_users))
        keep = rank < self._rows_kept_per_user
        if self.whole_sequence_windows:
            rows_before_longest_prefix = rank - (self._rows_kept_per_user - 1)
            keep |= (rows_before_longest_prefix > 0) & (rows_before_longest_prefix % window == 0)
        return keep
