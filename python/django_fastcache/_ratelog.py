"""A log line that cannot flood: at most one record per interval, counting the ones it
held back. For events a client or a neighbour can trigger at will (an unreadable or
badly signed value read on every request)."""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any

__all__ = ["RateLimitedLog", "shared_log"]

_shared: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_shared_lock = threading.Lock()


def shared_log(owner: Any, logger: logging.Logger, interval: float) -> RateLimitedLog:
    """The one RateLimitedLog of ``owner`` (an object shared by the backend instances of a
    cache, such as its failure policy): Django builds a backend per thread, and the rate
    is per cache, not per thread."""
    with _shared_lock:
        log = _shared.get(owner)
        if log is None:
            log = _shared[owner] = RateLimitedLog(logger, interval)
        return log


class RateLimitedLog:
    """Emits through ``logger`` at most once per ``interval`` seconds (monotonic clock,
    or ``clock`` in tests); the next line says how many were suppressed. Thread-safe."""

    def __init__(self, logger: logging.Logger, interval: float = 30.0,
                 clock=time.monotonic) -> None:
        self.logger = logger
        self.interval = float(interval)
        self._clock = clock
        self._lock = threading.Lock()
        self._next_at = float("-inf")
        self._suppressed = 0

    def log(self, level: int, msg: str, *args: Any) -> bool:
        """Logs ``msg % args`` unless a line went out less than ``interval`` ago; returns
        whether it was logged."""
        now = self._clock()
        with self._lock:
            if now < self._next_at:
                self._suppressed += 1
                return False
            suppressed, self._suppressed = self._suppressed, 0
            self._next_at = now + self.interval
        if suppressed:
            msg += " (%d more like this suppressed in the last %.0f s)"
            args = (*args, suppressed, self.interval)
        self.logger.log(level, msg, *args)
        return True

    def warning(self, msg: str, *args: Any) -> bool:
        return self.log(logging.WARNING, msg, *args)
