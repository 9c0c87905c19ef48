"""``python bench/scale.py ...``, the command users type: runs :mod:`recbole_oneranker.bench.scale`."""

from recbole_oneranker.bench.scale import main

raise SystemExit(main())
