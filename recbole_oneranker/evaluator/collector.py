"""A RecBole ``Collector`` that also gathers each evaluated target's value (for :class:`~.metrics.GMV`) and user."""

from __future__ import annotations

import numpy as np
import torch
from recbole.evaluator import Collector

from recbole_oneranker.evaluator.metrics import VALUE_DATA_KEY


class ValueCollector(Collector):
    """Collects ``interaction[value_field]`` of every evaluated row when a metric needs ``data.value``, and keeps
    the last evaluation's data (``last_struct``) and its users in row order (``last_users``), so per-user results
    can be read, and paired across models, after ``Trainer.evaluate``."""

    def __init__(self, config):
        super().__init__(config)
        self.last_struct = None
        self.last_users: np.ndarray | None = None
        self._users: list[torch.Tensor] = []
        self.uid_field = config["USER_ID_FIELD"]
        self.value_field = config["value_field"]
        if self.register.need(VALUE_DATA_KEY) and not self.value_field:
            raise ValueError(
                "metric GMV needs a value: set 'value_field' to a float column of the .inter file "
                "(the dataset configs in dataset_configs/ declare one where the data has it)"
            )

    def eval_batch_collect(self, scores_tensor, interaction, positive_u, positive_i):
        super().eval_batch_collect(scores_tensor, interaction, positive_u, positive_i)
        if self.uid_field in interaction:
            self._users.append(interaction[self.uid_field].detach().cpu())
        if self.register.need(VALUE_DATA_KEY):
            if self.value_field not in interaction:
                raise ValueError(
                    f"value_field '{self.value_field}' is not in the evaluation batch; "
                    f"add it to load_col (inter) in the dataset config"
                )
            self.data_struct.update_tensor(VALUE_DATA_KEY, interaction[self.value_field].float().to(self.device))

    def get_data_struct(self):
        returned = self.last_struct = super().get_data_struct()
        self.last_users = torch.cat(self._users).numpy() if self._users else None
        self._users = []
        # RecBole resets only rec.* and data.label between evaluations; without this, values would pile up
        # across epochs and the second evaluation would compare n users with 2n values.
        if VALUE_DATA_KEY in self.data_struct:
            del self.data_struct[VALUE_DATA_KEY]
        return returned


def target_ranks(struct) -> np.ndarray:
    """``[n_users]`` 1-based rank of each user's first positive among the top ``max(topk)``; 0 when not there.

    Read from RecBole's ``rec.topk`` rows (hit flags for ranks 1..max_k, then the positive count); with one held-out
    target per user, as in leave-one-out, Hit@K, NDCG@K and MRR@K of every user follow from it.
    """
    rows = struct.get("rec.topk").numpy()
    hits = rows[:, :-1].astype(bool)  # [n_users, max_k]
    return np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0)
