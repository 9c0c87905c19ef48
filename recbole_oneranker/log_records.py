"""Which log records a run shows on the terminal: everything but those marked for the log file only."""

from __future__ import annotations

import logging

__all__ = ["LOG_FILE_ONLY", "shown_on_terminal"]

# ``logger.info(..., extra=LOG_FILE_ONLY)``: a record the terminal shows only with ``verbose`` (the log file has all).
LOG_FILE_ONLY = {"file_only": True}


def shown_on_terminal(record: logging.LogRecord) -> bool:
    """The console handler's filter: False for records logged with ``extra=LOG_FILE_ONLY``."""
    return not getattr(record, "file_only", False)
