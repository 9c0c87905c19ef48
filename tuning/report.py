"""``python tuning/report.py ...``, the command users type: runs :mod:`recbole_oneranker.tuning.report`."""

from recbole_oneranker.tuning.report import main

raise SystemExit(main())
