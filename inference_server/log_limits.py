"""A rate-limited log: a flood of bad requests must not fill the operator's disk.

A token bucket lets ``burst`` lines through at once and ``rate`` lines per second after that; the
lines it holds back are counted and reported in one "N similar messages suppressed" line when the
bucket has room again. Client-supplied strings reach the log through ``protocol.clip``, escaped and
truncated, so they cannot forge lines either.
"""
from __future__ import annotations

import logging
import threading
import time
import traceback
import uuid
from typing import Callable

# The server's log lines; its worker processes write theirs to the same stream in the same form.
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, rate: float = 2.0, burst: int = 20,
                 clock: Callable[[], float] = time.monotonic):
        self._logger = logger
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()
        self._suppressed = 0
        self._lock = threading.Lock()  # the I/O thread, the worker and the key check all log here

    def log(self, level: int, msg: str, *args) -> bool:
        """Log the line if the bucket allows; returns whether it was written."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now
            if self._tokens < 1:
                self._suppressed += 1
                return False
            self._tokens -= 1
            suppressed, self._suppressed = self._suppressed, 0
        if suppressed:
            self._logger.warning("%d similar messages suppressed", suppressed)
        self._logger.log(level, msg, *args)
        return True

    def flush(self) -> None:
        """Report held-back lines once the flood is over (called from the server's loop)."""
        with self._lock:
            if not self._suppressed or self._clock() - self._stamp < 1.0 / self._rate:
                return
            suppressed, self._suppressed = self._suppressed, 0
        self._logger.warning("%d similar messages suppressed", suppressed)

    def warning(self, msg: str, *args) -> bool:
        return self.log(logging.WARNING, msg, *args)

    def info(self, msg: str, *args) -> bool:
        return self.log(logging.INFO, msg, *args)


def log_internal_error(failures: RateLimitedLog, context: str) -> str:
    """Log the current exception's traceback under a new error id (rate-limited); returns the id, all
    a client is told (a traceback can carry paths and data)."""
    error_id = uuid.uuid4().hex[:12]
    failures.log(logging.ERROR, "internal error %s in %s:\n%s", error_id, context, traceback.format_exc())
    return error_id
