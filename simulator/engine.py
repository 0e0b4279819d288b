"""Discrete-event engine: a virtual clock and a heap of events; wall time only on request."""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from typing import Final

Action = Callable[[float], None]

# A realtime run never sleeps less than this: fewer, longer sleeps keep the bridge cheap.
_MIN_SLEEP_S: Final = 0.002


class Engine:
    """Events run in (time, insertion order): the same schedule always runs the same way.

    The heap holds bare times (float compares, C-speed on both CPython and PyPy); the
    actions due at a time wait in insertion order in ``_due``.
    """

    __slots__ = ("_due", "_heap", "_sim0", "_wall0", "events_run", "now", "realtime_speed", "stop_requested")

    def __init__(self) -> None:
        self._heap: list[float] = []
        self._due: dict[float, list[Action]] = {}
        self.now = 0.0
        self.events_run = 0
        self.realtime_speed: float | None = None
        self._wall0 = 0.0
        self._sim0 = 0.0
        self.stop_requested = False

    def at(self, t: float, action: Action) -> None:
        """Schedule ``action(t)`` at simulated time ``t`` (never in the past)."""
        if t < self.now:
            t = self.now
        due = self._due.get(t)
        if due is None:
            self._due[t] = [action]
            heapq.heappush(self._heap, t)
        else:
            due.append(action)

    def set_realtime(self, speed: float | None) -> None:
        """Pace the run at ``speed`` x wall time from now on (None: as fast as possible)."""
        self.realtime_speed = speed
        self._wall0 = time.monotonic()
        self._sim0 = self.now

    def _pace(self, t: float) -> None:
        speed = self.realtime_speed
        if speed is None:
            return
        due = self._wall0 + (t - self._sim0) / speed
        delay = due - time.monotonic()
        if delay > _MIN_SLEEP_S:
            time.sleep(min(delay, 0.1))
            if due - time.monotonic() > _MIN_SLEEP_S:
                self._pace_interruptible(t)

    def run_until(self, t_end: float) -> None:
        heap = self._heap
        due = self._due
        pop = heapq.heappop
        while heap and heap[0] <= t_end:
            if self.stop_requested:
                return
            t = heap[0]
            actions = due[t]
            action = actions.pop(0)
            if not actions:
                pop(heap)
                del due[t]
            if self.realtime_speed is not None:
                self._pace(t)
            self.now = t
            action(t)
            self.events_run += 1
        if self.realtime_speed is not None:
            self._pace_interruptible(t_end)
            if self.stop_requested:
                return
        self.now = max(self.now, t_end)

    def _pace_interruptible(self, t: float) -> None:
        # An idle stretch of simulated time: sleep in short steps so stop() is prompt.
        speed = self.realtime_speed
        assert speed is not None
        due = self._wall0 + (t - self._sim0) / speed
        while not self.stop_requested:
            delay = due - time.monotonic()
            if delay <= 0:
                return
            time.sleep(min(delay, 0.1))

    def next_time(self) -> float | None:
        return self._heap[0] if self._heap else None
