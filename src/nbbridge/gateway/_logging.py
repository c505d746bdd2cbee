"""``--verbose LEVEL`` and ``--log_file FILE``, as in the original, through twisted.logger."""

from __future__ import annotations

from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
    textFileLogObserver,
)

_LEVELS = {0: LogLevel.warn, 1: LogLevel.info}


def level_for(verbose: int) -> LogLevel:
    """The lowest level logged for ``--verbose VERBOSE`` (0: warnings, 1: info, 2+: debug)."""
    return _LEVELS.get(verbose, LogLevel.debug if verbose > 1 else LogLevel.warn)


def log_observer(verbose: int, stream: IO[Any]) -> ILogObserver:
    """An observer writing events at or above VERBOSE's level to STREAM."""
    predicate = LogLevelFilterPredicate(defaultLogLevel=level_for(verbose))
    return FilteringLogObserver(textFileLogObserver(stream), [predicate])


def start_logging(verbose: int, log_file: str | None) -> ILogObserver | None:
    """With LOG_FILE, add an observer writing there (twistd's own log is left as it is)."""
    if log_file is None:
        return None
    stream = open(log_file, "a", encoding="utf-8")  # noqa: SIM115 (kept for the process)
    observer = log_observer(verbose, stream)
    globalLogPublisher.addObserver(observer)
    return observer
