"""Value-aware ranking metrics, registered with RecBole's evaluator by :func:`recbole_oneranker.evaluator.register`."""

from __future__ import annotations

import numpy as np
from recbole.evaluator.base_metric import TopkMetric

VALUE_DATA_KEY = "data.value"


class GMV(TopkMetric):
    r"""GMV@K: the share of the evaluation targets' total value that the top-K lists capture.

    Each evaluated user u has one held-out target with value :math:`v_u` (a price, or a declared proxy such as
    the rating or the funnel stage; see ``value_field`` in the dataset config). With :math:`\mathrm{hit}_u@K` = 1
    when the target is among the top K:

    .. math::
        \mathrm{GMV@K} = \frac{\sum_u v_u \, \mathrm{hit}_u@K}{\sum_u v_u}

    It lies in [0, 1] and equals Hit@K (= Recall@K with one target) when all values are equal, so a model that
    favours valuable targets scores above its Hit@K. Needs ``value_field`` set in the config.
    """

    metric_need = ["rec.topk", VALUE_DATA_KEY]

    def calculate_metric(self, dataobject):
        hits, _ = self.used_info(dataobject)  # [n_users, max_k] bool: target at rank <= k
        values = dataobject.get(VALUE_DATA_KEY).numpy().astype(np.float64)  # [n_users]
        if len(values) != len(hits):
            raise ValueError(f"GMV: {len(values)} target values for {len(hits)} ranked users")
        hit_at_k = np.cumsum(hits, axis=1) > 0  # [n_users, max_k]
        captured = hit_at_k * value_shares(values)[:, None]  # topk_result averages over users
        return self.topk_result("gmv", captured)


def value_shares(values: np.ndarray) -> np.ndarray:
    """``[n_users]`` each user's target value times n_users / the total value: the share a hit of that user adds
    to GMV@K, so that the mean over users of the hits' shares is GMV@K (0 for every user when the total is 0)."""
    total = values.sum()
    return values * (len(values) / total if total > 0 else 0.0)
