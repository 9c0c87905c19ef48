"""A RecBole ``Collector`` that also gathers each evaluated target's value (for :class:`~.metrics.GMV`), user and
rank."""

from __future__ import annotations

import numpy as np
import torch
from recbole.evaluator import Collector

from recbole_oneranker import compat
from recbole_oneranker.evaluator.metrics import VALUE_DATA_KEY
from recbole_oneranker.evaluator.ranking import target_ranks


class ValueCollector(Collector):
    """Collects ``interaction[value_field]`` of every evaluated row when a metric needs ``data.value``, and keeps
    the last ranking evaluation's users, the rank of each one's target (:func:`~.ranking.target_ranks`) and, with a
    value metric, each target's value, in row order (``last_users``, ``last_ranks``, ``last_values``), so per-user
    results can be read, and paired across models, after ``Trainer.evaluate``.

    A full-ranking batch has one interaction per score row. A candidate-set batch (RecBole's negative-sampled
    evaluation) has a block per user, the target and its sampled negatives; its users are read one per block.

    In a distributed run the trainer sets ``shard_indices`` to the loader indices this process evaluates; the
    collected rows of every process are then put together, each user once (``compat`` fix 15), so that every
    process computes the metrics of the whole split.
    """

    def __init__(self, config):
        super().__init__(config)
        self.last_users: np.ndarray | None = None
        self.last_ranks: np.ndarray | None = None
        self.last_values: np.ndarray | None = None
        self._users: list[torch.Tensor] = []
        self._ranks: list[torch.Tensor] = []
        self.shard_indices: list[int] | None = None
        self.uid_field = config["USER_ID_FIELD"]
        self.value_field = config["value_field"]
        if self.register.need(VALUE_DATA_KEY) and not self.value_field:
            raise ValueError(
                "metric GMV needs a value: set 'value_field' to a float column of the .inter file "
                "(the dataset configs in dataset_configs/ declare one where the data has it)"
            )

    def eval_batch_collect(self, scores_tensor, interaction, positive_u, positive_i):
        super().eval_batch_collect(scores_tensor, interaction, positive_u, positive_i)
        if self.register.need("rec.topk"):  # a ranking evaluation: scores are [users, items]
            is_target = torch.zeros_like(scores_tensor, dtype=torch.bool)
            is_target[positive_u, positive_i] = True
            self._ranks.append(target_ranks(scores_tensor, is_target).cpu())
            if self.uid_field in interaction:
                self._users.append(score_row_users(interaction[self.uid_field].detach().cpu(), len(scores_tensor)))
        if self.register.need(VALUE_DATA_KEY):
            if self.value_field not in interaction:
                raise ValueError(
                    f"value_field '{self.value_field}' is not in the evaluation batch; "
                    f"add it to load_col (inter) in the dataset config"
                )
            self.data_struct.update_tensor(VALUE_DATA_KEY, interaction[self.value_field].float().to(self.device))

    def get_data_struct(self):
        returned = super().get_data_struct()
        users = torch.cat(self._users) if self._users else None
        ranks = torch.cat(self._ranks) if self._ranks else None
        self._users, self._ranks = [], []
        if self.shard_indices is not None:
            users, ranks = self._gather_shards(returned, users, ranks)
        self.last_users = None if users is None else users.numpy()
        self.last_ranks = None if ranks is None else ranks.numpy()
        values = returned[VALUE_DATA_KEY] if VALUE_DATA_KEY in returned else None
        self.last_values = None if values is None or ranks is None else values.cpu().numpy()
        # RecBole resets only rec.* and data.label between evaluations; without this, values would pile up
        # across epochs and the second evaluation would compare n users with 2n values.
        if VALUE_DATA_KEY in self.data_struct:
            del self.data_struct[VALUE_DATA_KEY]
        return returned

    def _gather_shards(self, struct, users: torch.Tensor | None, ranks: torch.Tensor | None):
        """Replace the per-row entries of ``struct`` by those of every process (:func:`compat.rows_of_all_ranks`);
        returns the users and ranks of every process alike."""
        rows = {key: struct[key] for key in (*compat.EVALUATION_ROW_KEYS, VALUE_DATA_KEY) if key in struct}
        rows.update({name: value for name, value in (("users", users), ("ranks", ranks)) if value is not None})
        merged = compat.rows_of_all_ranks(rows, self.shard_indices)
        for key, values in merged.items():
            if key not in ("users", "ranks"):
                struct[key] = values
        return merged.get("users"), merged.get("ranks")


def score_row_users(users: torch.Tensor, score_rows: int) -> torch.Tensor:
    """``[score_rows]`` user of each score row of an evaluation batch whose interactions hold ``users``.

    One interaction per row (full ranking) is the row's user. A negative-sampled batch lays each user's target and
    negatives out as one consecutive block (RecBole's ``NegSampleEvalDataLoader``; a user once per batch), so its
    users are the blocks'.

    Raises:
        ValueError: the interactions fit neither layout.
    """
    if len(users) == score_rows:
        return users
    blocks = torch.unique_consecutive(users)
    if len(blocks) != score_rows:
        raise ValueError(f"{len(users)} evaluated interactions of {len(blocks)} users for {score_rows} score rows")
    return blocks
