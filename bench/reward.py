"""``python bench/reward.py ...``, the command users type: runs :mod:`recbole_oneranker.bench.reward`."""

from recbole_oneranker.bench.reward import main

raise SystemExit(main())
