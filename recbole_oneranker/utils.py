"""The model lookup's former place: ``config.py`` still imports :func:`get_model` from here.

Delete this file once ``config.py`` imports ``from recbole_oneranker.registry import get_model``.
"""

from recbole_oneranker.registry import get_model

__all__ = ["get_model"]
