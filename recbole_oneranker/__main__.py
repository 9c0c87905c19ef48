"""``python -m recbole_oneranker`` is the ``run_recbole`` command."""

from recbole_oneranker.cli import main

raise SystemExit(main())
