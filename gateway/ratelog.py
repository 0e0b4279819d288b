"""Faults from outside (bad frames, flaky ports) are logged loudly once, then quietly.

A street full of foreign BLE beacons or a noisy serial line must not fill a Pi's journal:
the first occurrence of a key is logged at WARNING (or the ``level`` given: ERROR for bugs),
repeats at DEBUG, and a summary line with the count is logged at most every ``interval_s``
(at INFO, or at ``level`` when that is above WARNING: a repeating bug stays an error).
"""

from __future__ import annotations

import json
import logging
import time
import traceback


class RateLimitedLog:
    __slots__ = ("_interval_s", "_last", "_level", "_logger", "_seen", "_suppressed")

    def __init__(
        self, logger: logging.Logger, interval_s: float = 60.0, level: int = logging.WARNING
    ) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._level = level
        self._seen: set[str] = set()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, key: str, msg: str, *args: object) -> None:
        if key not in self._seen:
            self._seen.add(key)
            self._last[key] = time.monotonic()
            self._logger.log(self._level, msg + " (first occurrence; repeats are rate-limited)", *args)
            return
        now = time.monotonic()
        n = self._suppressed.get(key, 0) + 1
        if now - self._last[key] >= self._interval_s:
            summary = self._level if self._level > logging.WARNING else logging.INFO
            self._logger.log(summary, "event=repeated key=%s count=%d interval_s=%.0f", key, n, self._interval_s)
            self._last[key] = now
            self._suppressed[key] = 0
        else:
            self._suppressed[key] = n
            if self._logger.isEnabledFor(logging.DEBUG):
                self._logger.debug(msg, *args)


class Traceback:
    """An exception's traceback as one JSON string (journald keeps it on one line), formatted
    only if the log line is emitted: repeats through RateLimitedLog are mostly dropped."""

    __slots__ = ("_exc",)

    def __init__(self, exc: BaseException) -> None:
        self._exc = exc

    def __str__(self) -> str:
        return json.dumps("".join(traceback.format_exception(self._exc)))
