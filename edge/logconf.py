"""The only place structlog is configured: console lines on a TTY, JSON lines otherwise."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def configure(level: str = "info", fmt: str = "auto", *, stream: Any = None) -> None:
    stream = stream or sys.stderr
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    if console:
        processors.append(structlog.dev.ConsoleRenderer(colors=stream.isatty()))
    else:
        processors.append(structlog.processors.JSONRenderer())
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(stream),
        # not cached: a cached logger keeps the level and format of its first use, so a
        # [log] hot reload would reach only loggers that had not logged yet. Building
        # the bound logger per call costs about a microsecond; the daemon logs seldom.
        cache_logger_on_first_use=False,
    )


class Once:
    """Log a recurring problem at WARNING the first time and at DEBUG afterwards."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def __call__(self, log: Any, key: str, event: str, **kw: Any) -> None:
        if self.first(key):
            log.warning(event, **kw)
        else:
            log.debug(event, repeat=True, **kw)

    def first(self, key: str) -> bool:
        """True the first time ``key`` comes (until ``clear``): for a line logged once."""
        if key in self._seen:
            return False
        self._seen.add(key)
        return True

    def clear(self, key: str) -> None:
        self._seen.discard(key)
