"""``python bench/speed.py ...``, the command users type: runs :mod:`recbole_oneranker.bench.speed`."""

from recbole_oneranker.bench.speed import main

raise SystemExit(main())
