"""Evaluation additions: the GMV@K metric, the collector that feeds it target values, the ranks of targets and the
seen-item mask (:mod:`.ranking`), and the protocol of a run (:mod:`.protocol`).

RecBole builds its metric registry at import from the classes defined in ``recbole.evaluator.metrics``;
``Config``, ``Evaluator`` and ``Collector`` all read the same four module-level objects, so registering a metric
means adding it to those objects in place, before any ``Config`` is built.
"""

from __future__ import annotations

from recbole.evaluator import register as recbole_register

from recbole_oneranker.evaluator.collector import ValueCollector
from recbole_oneranker.evaluator.metrics import GMV

PLUGIN_METRICS = (GMV,)


def register() -> None:
    """Make this package's metrics usable by name in ``metrics:`` / ``valid_metric:`` (idempotent)."""
    for metric in PLUGIN_METRICS:
        name = metric.__name__.lower()
        recbole_register.metrics_dict[name] = metric
        recbole_register.metric_information[name] = metric.metric_need
        recbole_register.metric_types[name] = metric.metric_type
        if metric.smaller and name not in recbole_register.smaller_metrics:
            recbole_register.smaller_metrics.append(name)


__all__ = ["GMV", "ValueCollector", "register"]
