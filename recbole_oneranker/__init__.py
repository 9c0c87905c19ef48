"""recbole-oneranker: OneRanker and generative-recommendation baselines as a RecBole 1.2.1 plugin.

Importing the package applies the compatibility fixes of :mod:`recbole_oneranker.compat` (numpy 2, pandas check)
and registers its metrics with RecBole's evaluator. Entry points: the ``run_recbole`` command
(:mod:`recbole_oneranker.cli`) and :func:`recbole_oneranker.quick_start.run`.
"""

from __future__ import annotations

from recbole_oneranker import compat

compat.apply()  # before anything imports recbole's Config (it reads np.float_)

from recbole_oneranker.evaluator import register as _register_metrics  # noqa: E402

_register_metrics()

__version__ = "0.1.0"
