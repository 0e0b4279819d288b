"""Faults from outside (bad frames, flaky ports) are logged loudly once, then quietly.

A street full of foreign BLE beacons or a noisy serial line must not fill a Pi's journal:
the first occurrence of a key is logged at WARNING, repeats at DEBUG, and a summary line with
the count is logged at most every ``interval_s``.
"""

from __future__ import annotations

import logging
import time


class RateLimitedLog:
    __slots__ = ("_interval_s", "_last", "_logger", "_seen", "_suppressed")

    def __init__(self, logger: logging.Logger, interval_s: float = 60.0) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._seen: set[str] = set()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, key: str, msg: str, *args: object) -> None:
        if key not in self._seen:
            self._seen.add(key)
            self._last[key] = time.monotonic()
            self._logger.warning(msg + " (first occurrence; repeats are rate-limited)", *args)
            return
        now = time.monotonic()
        n = self._suppressed.get(key, 0) + 1
        if now - self._last[key] >= self._interval_s:
            self._logger.info("event=repeated key=%s count=%d interval_s=%.0f", key, n, self._interval_s)
            self._last[key] = now
            self._suppressed[key] = 0
        else:
            self._suppressed[key] = n
            if self._logger.isEnabledFor(logging.DEBUG):
                self._logger.debug(msg, *args)
