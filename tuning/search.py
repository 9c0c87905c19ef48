"""``python tuning/search.py ...``, the command users type: runs :mod:`recbole_oneranker.tuning.search`."""

from recbole_oneranker.tuning.search import run_as_script

raise SystemExit(run_as_script())
