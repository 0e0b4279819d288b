"""The BLE watchdog's stall threshold, learned from the silences this site actually has.

A healthy quiet site is silent too: BlueZ only delivers our company id, and a node may
report once an hour, so no fixed timeout tells a stalled adapter from a quiet street. The
threshold is a multiple of a high quantile of the site's recent silences (below), never
shorter than ``watchdog_s`` (``ble.watchdog_s``). Pure: the caller passes the times in.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from typing import Final

# A silence is a stall only when it is longer than _STALL_FACTOR x the 95th percentile of
# this site's silences over the last day (a day: nights are quiet every night).
_STALL_FACTOR: Final = 3.0
_STALL_QUANTILE: Final = 0.95
_SILENCE_MEMORY_S: Final = 86400.0
_SILENCE_SAMPLES: Final = 256


class SilenceModel:
    """How long this site's silences last, learned per run; the stall threshold follows.

    Gaps shorter than ``watchdog_s / factor`` cannot raise the threshold, and counting them
    would let the repeats inside a node's burst hide the silences between bursts.
    """

    __slots__ = ("_by_size", "_samples", "factor", "max_samples", "memory_s", "quantile",
                 "threshold_s", "watchdog_s")

    def __init__(self, watchdog_s: float, factor: float = _STALL_FACTOR,
                 quantile: float = _STALL_QUANTILE, memory_s: float = _SILENCE_MEMORY_S,
                 max_samples: int = _SILENCE_SAMPLES) -> None:
        self.watchdog_s = watchdog_s
        self.factor = factor
        self.quantile = quantile
        self.memory_s = memory_s
        self.max_samples = max_samples
        self._samples: deque[tuple[float, float]] = deque()  # (seen_at_s, gap_s), oldest first
        self._by_size: list[float] = []
        self.threshold_s = watchdog_s

    @property
    def floor_s(self) -> float:
        return self.watchdog_s / self.factor

    @property
    def samples(self) -> int:
        return len(self._samples)

    def observe(self, gap_s: float, now_s: float) -> None:
        if gap_s < self.floor_s:
            return
        self._samples.append((now_s, gap_s))
        bisect.insort(self._by_size, gap_s)
        if len(self._samples) > self.max_samples:
            self._forget_oldest()
        self._update()

    def expire(self, now_s: float) -> None:
        changed = False
        while self._samples and now_s - self._samples[0][0] > self.memory_s:
            self._forget_oldest()
            changed = True
        if changed:
            self._update()

    def _forget_oldest(self) -> None:
        _, gap_s = self._samples.popleft()
        del self._by_size[bisect.bisect_left(self._by_size, gap_s)]

    def _update(self) -> None:
        if not self._by_size:
            self.threshold_s = self.watchdog_s
            return
        rank = max(1, math.ceil(len(self._by_size) * self.quantile - 1e-9))  # nearest rank
        high_s = self._by_size[rank - 1]
        self.threshold_s = max(self.watchdog_s, self.factor * high_s)
