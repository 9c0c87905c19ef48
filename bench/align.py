"""``python bench/align.py ...``, the command users type: runs :mod:`recbole_oneranker.bench.align`."""

from recbole_oneranker.bench.align import main

raise SystemExit(main())
