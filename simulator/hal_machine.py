"""MicroPython ``machine`` for one simulated node: resets, sleep, RTC, watchdog.

Contract: ``SimMachine`` assembles the pads (simulator/hal_pins.py) and buses
(simulator/hal_buses.py) with the node's reset cause, wake reason and unique id (numbers from
simulator/esp32_port.py). ``deepsleep(ms)`` and ``reset()`` do not return: they raise
``DeepSleep``/``SoftReset``, BaseExceptions that unwind the firmware's cycle to the simulator
(simulator/node.py), which schedules the next wake or boot; ``WatchdogReset`` is raised by the
node when a started WDT goes unfed past its timeout (once started it cannot be changed or
stopped). ``deepsleep`` refuses a float as the port's ``mp_obj_get_int`` does. RTC memory
holds at most 2048 bytes (``ValueError`` beyond) and ``RTC.datetime`` sets the node's clock
offset.
"""

from __future__ import annotations

import time as _time
from typing import TYPE_CHECKING, Any, Final

from simulator import esp32_port as port
from simulator.hal_buses import SimI2C, UARTFactory
from simulator.hal_pins import ADCFactory, PinFactory, pin_id

if TYPE_CHECKING:
    from simulator.node import SimNode


class DeepSleep(BaseException):
    """machine.deepsleep() called inside the cycle: unwinds to the simulator."""

    def __init__(self, ms: int | None) -> None:
        super().__init__(ms)
        self.ms = ms


class SoftReset(BaseException):
    """machine.reset()/soft_reset() called inside the cycle."""


class WatchdogReset(BaseException):
    """The node went longer than the WDT timeout without a feed."""


class SimRTC:
    __slots__ = ("_n",)

    def __init__(self, node: SimNode) -> None:
        self._n = node

    def memory(self, data: Any = None) -> bytes | None:
        if data is None:
            return bytes(self._n.rtc_mem)
        b = bytes(data)
        if len(b) > 2048:
            raise ValueError("buffer too long")
        self._n.rtc_mem = b
        return None

    def datetime(self, dt: tuple[int, ...] | None = None) -> tuple[int, ...] | None:
        if dt is None:
            g = _time.gmtime(self._n.epoch_s())
            return (g.tm_year, g.tm_mon, g.tm_mday, g.tm_wday, g.tm_hour, g.tm_min, g.tm_sec, 0)
        import calendar

        target = calendar.timegm((dt[0], dt[1], dt[2], dt[4], dt[5], dt[6], 0, 0, 0))
        self._n.clock_offset_s += target - self._n.epoch_s()
        return None

    def init(self, dt: tuple[int, ...]) -> None:
        self.datetime(dt)


class SimWDT:
    __slots__ = ("_n",)

    def __init__(self, node: SimNode, id: int = 0, timeout: int = 5000) -> None:
        self._n = node
        if node.wdt_timeout_s is None:  # once started it cannot be changed or stopped
            node.wdt_timeout_s = timeout / 1000.0
        self.feed()

    def feed(self) -> None:
        n = self._n
        n.wdt_feed_t = n.t
        n.wdt_deadline = n.t + (n.wdt_timeout_s or 0.0)


class SimMachine:
    PWRON_RESET: Final = port.PWRON_RESET
    HARD_RESET: Final = port.HARD_RESET
    WDT_RESET: Final = port.WDT_RESET
    DEEPSLEEP_RESET: Final = port.DEEPSLEEP_RESET
    SOFT_RESET: Final = port.SOFT_RESET
    EXT0_WAKE: Final = port.EXT0_WAKE
    PIN_WAKE: Final = port.PIN_WAKE
    EXT1_WAKE: Final = port.EXT1_WAKE
    TIMER_WAKE: Final = port.TIMER_WAKE
    TOUCHPAD_WAKE: Final = port.TOUCHPAD_WAKE
    ULP_WAKE: Final = port.ULP_WAKE
    IDLE: Final = 1
    SLEEP: Final = 2
    DEEPSLEEP: Final = 4

    def __init__(self, node: SimNode) -> None:
        self._n = node
        self.Pin = PinFactory(node)
        self.ADC = ADCFactory(node)
        self.UART = UARTFactory(node)
        self._rtc = SimRTC(node)

    def I2C(self, id: int = -1, *, scl: Any = None, sda: Any = None, freq: int = 400_000,
            timeout: int = 50_000) -> SimI2C:
        return SimI2C(self._n, id, scl=scl, sda=sda, freq=freq, timeout=timeout)

    SoftI2C = I2C

    def RTC(self) -> SimRTC:
        return self._rtc

    def WDT(self, id: int = 0, timeout: int = 5000) -> SimWDT:
        return SimWDT(self._n, id, timeout)

    def reset_cause(self) -> int:
        return self._n.reset_cause

    def wake_reason(self) -> int:
        return self._n.wake_reason

    def unique_id(self) -> bytes:
        return b"\x24\x0a" + self._n.node_id.to_bytes(4, "big")

    def freq(self, hz: int | None = None) -> int | None:
        if hz is None:
            return 160_000_000
        return None

    def time_pulse_us(self, pin: Any, pulse_level: int, timeout_us: int = 1_000_000, /) -> int:
        return self._n.time_pulse_us(pin_id(pin), pulse_level, timeout_us)

    def deepsleep(self, time_ms: int | None = None, /) -> None:
        if time_ms is not None and not isinstance(time_ms, int):
            # the port parses an MP_ARG_INT: mp_obj_get_int refuses a float
            raise TypeError(f"can't convert {type(time_ms).__name__} to int")
        raise DeepSleep(time_ms)

    def lightsleep(self, time_ms: int | None = None, /) -> None:
        self._n.sleep((time_ms or 0) / 1000.0, state="light_sleep")

    def reset(self) -> None:
        raise SoftReset()

    soft_reset = reset

    def idle(self) -> None:
        self._n.advance(1e-3)

    def disable_irq(self) -> int:
        return 0

    def enable_irq(self, state: int = 0) -> None:
        return None
