"""``python bench/diagnose.py ...``, the command users type: runs :mod:`recbole_oneranker.bench.diagnose`."""

from recbole_oneranker.bench.diagnose import main

raise SystemExit(main())
