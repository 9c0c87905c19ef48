"""Benchmarks (``python bench/quality.py``, ``python bench/speed.py``), diagnostics of trained checkpoints
(``python bench/diagnose.py``) and the results summary (``python bench/quality.py --summary``); the scripts under
``bench/`` run the modules of this package."""
