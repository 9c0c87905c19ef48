"""``python bench/study.py ...``, the command users type: runs :mod:`recbole_oneranker.bench.study`."""

from recbole_oneranker.bench.study import main

raise SystemExit(main())
