"""MicroPython ``time`` for one simulated node (docs/HAL.md: ``hal.time``).

Contract: ticks count milliseconds/microseconds since this boot of the node's virtual clock and
wrap at 2**30 like MicroPython's (``ticks_diff``/``ticks_add`` do the port's modular
arithmetic); ``time()``, ``gmtime()`` and ``time_ns()`` read the node's RTC clock (epoch plus
its offset, which a clock fault or ``RTC.datetime`` moves); every ``sleep*`` advances the
node's virtual clock, charged as the power state the firmware declared. Nothing reads the
host's wall clock.
"""

from __future__ import annotations

import time as _time
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from simulator.node import SimNode

_TICKS_PERIOD: Final = 1 << 30  # MicroPython's ticks wrap at 2**30
_TICKS_HALF: Final = _TICKS_PERIOD // 2


class SimTime:
    """MicroPython ``time``: ticks count from this boot; time() is the node's RTC clock."""

    __slots__ = ("_n",)

    def __init__(self, node: SimNode) -> None:
        self._n = node

    def ticks_ms(self) -> int:
        n = self._n
        return int((n.t - n.boot_t) * 1000.0) % _TICKS_PERIOD

    def ticks_us(self) -> int:
        n = self._n
        return int((n.t - n.boot_t) * 1e6) % _TICKS_PERIOD

    def ticks_cpu(self) -> int:
        return self.ticks_us()

    def ticks_diff(self, ticks1: int, ticks2: int) -> int:
        return ((ticks1 - ticks2 + _TICKS_HALF) % _TICKS_PERIOD) - _TICKS_HALF

    def ticks_add(self, ticks: int, delta: int) -> int:
        return (ticks + delta) % _TICKS_PERIOD

    def sleep_ms(self, ms: int) -> None:
        self._n.sleep(ms / 1000.0)

    def sleep_us(self, us: int) -> None:
        self._n.sleep(us / 1e6)

    def sleep(self, seconds: float) -> None:
        self._n.sleep(float(seconds))

    def time(self) -> int:
        return int(self._n.epoch_s())

    def time_ns(self) -> int:
        return int(self._n.epoch_s() * 1e9)

    def gmtime(self, secs: int | None = None) -> tuple[int, ...]:
        s = self._n.epoch_s() if secs is None else secs
        g = _time.gmtime(s)
        return (g.tm_year, g.tm_mon, g.tm_mday, g.tm_hour, g.tm_min, g.tm_sec, g.tm_wday, g.tm_yday)

    localtime = gmtime

    def mktime(self, tm: tuple[int, ...]) -> int:
        import calendar

        return calendar.timegm((*tm[:6], 0, 0, 0))
