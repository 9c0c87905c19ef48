"""Optuna studies (``python tuning/search.py``) and their reports (``python tuning/report.py``): the scripts under
``tuning/`` run the modules of this package; search spaces are ``tuning/spaces/<Model>.yaml``."""
