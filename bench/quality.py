"""``python bench/quality.py ...``, the command users type: runs :mod:`recbole_oneranker.bench.quality`."""

from recbole_oneranker.bench.quality import main

raise SystemExit(main())
