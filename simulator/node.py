"""One simulated node: its hardware state, its wake cycle around the real firmware, its energy.

``SimNode`` is the board: pins, RTC memory, NVS and files survive what they survive on an
ESP32 (``fault``), and ``boot`` runs one cycle of firmware/main.py, then schedules the next
wake (timer or pin, searched a window at a time) on the engine. Awake time is charged by the
state the firmware declares; deep sleep from its start to the next boot. The radio is the
node's ``Advertiser`` (simulator.advertising), its prints go to simulator.console.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

from simulator.advertising import Advertiser
from simulator.devices import ConstWire, Echo, Wire
from simulator.energy import Cell, Meter, PowerProfile
from simulator.esp32_port import (
    DEEPSLEEP_RESET,
    EXT0_WAKE,
    EXT1_WAKE,
    GPIO_WAKE,
    HARD_RESET,
    PWRON_RESET,
    SOFT_RESET,
    TIMER_WAKE,
    WDT_RESET,
)
from simulator.hal import SimHAL
from simulator.hal_machine import DeepSleep, SoftReset, WatchdogReset
from simulator.rng import stream
from simulator.world import ambient_temperature_c

if TYPE_CHECKING:
    from simulator.sim import Simulation


LIGHT_SLEEP_UA: Final = 800.0  # ESP32 datasheet via FIELD-FACTS: light sleep 0.8 mA
# Pin wakes are searched at least this far ahead at a time (the world is drawn a day at a time).
WAKE_WINDOW_S: Final = 86400.0


class SimNode:
    """State that lives on the board (pins, RTC memory, NVS, files) plus the simulator's books."""

    def __init__(self, sim: Simulation, index: int, name: str, kind: str, node_id: int, key: bytes,
                 transport: str, board: dict[str, Any], profile: PowerProfile, cell: Cell,
                 position: tuple[float, float], seed: int, firmware: ModuleType) -> None:
        self.sim = sim
        self.index = index
        self.name = name
        self.kind = kind
        self.node_id = node_id
        self.key = key
        self.transport = transport
        self.board = board
        self.chip = str(board.get("chip", "esp32")).lower()
        self.rtc_wake_pins = frozenset(board.get("rtc_wake_pins", range(40)))
        self.profile = profile
        self.cell = cell
        self.position = position
        self.fw = firmware
        base = f"{seed}:{node_id}"
        self.rng_hw = stream(base + ":hw")
        self.rng_air = stream(base + ":air")
        self.rng_world = stream(base + ":world")
        self.files: dict[str, bytes] = {}
        self.nvs: dict[tuple[str, str], Any] = {}
        self.nvs_pending: dict[tuple[str, str], Any] = {}
        self.rtc_mem = b""
        self.pin_out: dict[int, int] = {}
        self.held: dict[int, int] = {}  # pads held through deep sleep (Pin(..., hold=True))
        self.wires: dict[int, Wire] = {}
        self.i2c_devices: dict[int, Any] = {}
        # Sensors behind the board's load switch (pin "sensor_power", active high): unpowered,
        # they NACK on I2C, answer no ping and draw nothing. Without a switch: always on.
        self.power_pin: int | None = None
        self.i2c_powered = True
        self.echo: dict[int, Echo] = {}
        self.battery_pin: int | None = None
        self.battery_ratio = 1.0  # V_battery / V_pin
        self.serial: Any = None
        self.world: Any = None
        self.hal = SimHAL(self)
        # clock and cycle
        self.t = 0.0
        self.boot_t = 0.0
        self.clock_offset_s = 0.0
        self.state = "cpu"
        self.reset_cause = PWRON_RESET
        self.wake_reason = 0
        self.wdt_timeout_s: float | None = None
        self.wdt_feed_t = 0.0
        self.wdt_deadline = math.inf
        self.cpu_s = 0.0
        self.sensor_s = 0.0
        self.light_s = 0.0
        self.uart_s = 0.0
        # From a UART write until the firmware declares its next state: sending, then
        # polling for the ack (us_serial's sleep_ms loop), charged as "uart".
        self.uart_busy = False
        self.ext0: tuple[int, int] | None = None
        self.ext1: tuple[list[int], int] | None = None
        self.gen = 0  # bumps when a scheduled wake is cancelled
        self.sleep_start: float | None = None
        self.sleep_ua = 0.0
        self.hung = False
        self.radio = Advertiser(self)
        # books
        self.meter = Meter()
        self.cycles = 0
        self.wakes: Counter[int] = Counter()
        self.resets: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.flash_writes = 0
        self.sensor_active_ua = 0.0
        self.last_fcnt: int | None = None
        self.console: list[str] = []  # the last lines the node printed
        self.console_lines = 0
        self.initial_used_uah = 0.0
        self.group = 0
        self.gw_id = ""
        self.link_db: list[float] = []

    # ------------------------------------------------------------------ time & energy
    def now_s(self) -> float:
        return self.t

    def epoch_s(self) -> float:
        return self.sim.epoch0 + self.t + self.clock_offset_s

    def temperature_c(self, t: float) -> float:
        return ambient_temperature_c(t, self.sim.t_day0)

    def advance(self, dt: float, state: str | None = None) -> None:
        """Spend ``dt`` seconds awake in ``state`` (charged when the cycle ends)."""
        if dt <= 0:
            return
        st = state or self.state
        if st == "sensor":
            self.sensor_s += dt
        elif st == "light_sleep":
            self.light_s += dt
        elif st == "uart":
            self.uart_s += dt
        else:
            self.cpu_s += dt
        self.t += dt
        if self.t > self.wdt_deadline:
            raise WatchdogReset()

    def _charge_awake(self) -> None:
        p = self.profile
        m = self.meter.uc
        m["cpu"] += self.cpu_s * p.active_ua
        m["sensor"] += self.sensor_s * (p.active_ua + self.sensor_active_ua)
        m["sleep"] += self.light_s * LIGHT_SLEEP_UA
        m["uart"] += self.uart_s * p.uart_ua
        self.cpu_s = self.sensor_s = self.light_s = self.uart_s = 0.0

    def sleep(self, dt: float, state: str | None = None) -> None:
        if self.serial is not None:
            self.serial.wait(self, dt)
        if state is None and self.uart_busy and self.state == "cpu":
            state = "uart"  # waiting for the gateway's ack
        self.advance(dt, state)

    def declare(self, state: str) -> None:
        """hal.energy(state): the firmware says what it does next (so the UART wait is over)."""
        self.state = state
        self.uart_busy = False

    # ------------------------------------------------------------------ pins & analog
    def set_pin_out(self, pin: int, level: int) -> None:
        self.pin_out[pin] = level
        if pin == self.power_pin:
            self.set_sensor_power(level == 1)

    def set_sensor_power(self, on: bool) -> None:
        if on == self.i2c_powered:
            return
        if on:  # a part that lost power boots with its power-on register values
            for dev in self.i2c_devices.values():
                dev.power_on_reset()
        self.i2c_powered = on

    def pin_level(self, pin: int, pull: int) -> int:
        w = self.wires.get(pin)
        if w is not None:
            return w.level(self.t)
        return 1 if pull == 2 else 0

    def adc_uv(self, pin: int) -> int:
        if pin != self.battery_pin:
            return int(self.rng_hw.uniform(0, 50_000))
        mv = self.battery_mv() / self.battery_ratio
        return int(mv * 1000 * (1 + self.rng_hw.gauss(0, 0.003)))

    def battery_mv(self) -> int:
        used_uah = self.meter.total_uc() / 3600.0 + self.initial_used_uah
        frac = used_uah / (self.cell.nominal_ah * 1e6 * self.cell.usable_fraction)
        return self.cell.voltage_mv(frac)

    def time_pulse_us(self, pin: int, level: int, timeout_us: int) -> int:
        echo = self.echo.get(pin)
        if echo is None or level != 1:
            self.advance(timeout_us / 1e6)
            return -1
        self.advance(30e-6)
        us = echo.pulse_us(self.t)
        if us is None:
            self.advance(timeout_us / 1e6)
            return -1
        if us > timeout_us:
            self.advance(timeout_us / 1e6)
            return -2
        self.advance(us / 1e6)
        return us

    # ------------------------------------------------------------------ the cycle
    def boot(self, t: float, cause: int, wake: int) -> None:
        """Power up (cold, reset or from deep sleep) and run one firmware cycle."""
        if self.sleep_start is not None:
            self.meter.add("sleep", self.profile.deep_sleep_ua * (t - self.sleep_start))
            self.meter.add("sleep_sensor", (self.sleep_ua - self.profile.deep_sleep_ua) * (t - self.sleep_start))
            self.sleep_start = None
        self.t = t
        self.boot_t = t
        self.reset_cause = cause
        self.wake_reason = wake
        self.resets[cause] += 1
        self.wakes[wake] += 1
        self.cycles += 1
        self.meter.add("boot", self.profile.boot_uc)
        self.t += self.profile.boot_ms / 1000.0
        self.cpu_s += self.sim.firmware_cpu_s  # the cycle's own bytecode (see Scenario)
        self.t += self.sim.firmware_cpu_s
        self.state = "cpu"
        self.uart_busy = False
        self.wdt_timeout_s = None
        self.wdt_deadline = math.inf
        self.ext0 = None
        self.ext1 = None
        self.radio.current = None
        self.pin_out.clear()
        self.pin_out.update(self.held)  # un-held pads come out of deep sleep reset
        if self.power_pin is not None:
            self.set_sensor_power(self.pin_out.get(self.power_pin, 0) == 1)
        if self.serial is not None:
            self.serial.reset(self)
        console = self.sim.console
        console.node = self
        saved, sys.stdout = sys.stdout, console  # the node's print() goes to its serial console
        try:
            self._cycle()
        finally:
            sys.stdout = saved
            self._charge_awake()

    def _cycle(self) -> None:
        """firmware/main.py, as the board runs it: its deep sleep, or what follows an escape."""
        try:
            self.sim.board_main.run(self)
        except DeepSleep as ds:
            self.radio.stop()
            self._sleep(None if ds.ms is None else float(ds.ms))
            return
        except SoftReset:
            self.radio.stop()
            self.sim.engine.at(self.t, self._event(SOFT_RESET, 0))
            return
        except WatchdogReset:
            self.radio.stop()
            self.errors["watchdog"] += 1
            self.sim.engine.at(self.t, self._event(WDT_RESET, 0, keep_rtc=True))
            return
        except Exception as exc:  # escaped main.py itself: the board drops to the REPL
            self.radio.stop()
            self.errors[f"main.py: {type(exc).__name__}: {exc}"[:120]] += 1
            self._repl()
            return
        self.radio.stop()
        self.errors["main.py returned without deep sleep"] += 1
        self._repl()

    def _repl(self) -> None:
        """At the REPL the CPU idles awake until the watchdog bites (or forever without one)."""
        if self.wdt_timeout_s is not None:
            t_bite = self.wdt_feed_t + self.wdt_timeout_s
            self.cpu_s += max(0.0, t_bite - self.t)
            self.t = max(self.t, t_bite)
            self.sim.engine.at(self.t, self._event(WDT_RESET, 0))
        else:
            self.hung = True
            self.sleep_start = self.t
            self.sleep_ua = self.profile.active_ua

    def _event(self, cause: int, wake: int, keep_rtc: bool = True) -> Any:
        gen = self.gen

        def fire(t: float) -> None:
            if gen != self.gen:
                return
            self.boot(t, cause, wake)

        return fire

    def sleep_current_ua(self) -> float:
        ua = self.profile.deep_sleep_ua
        if not self.i2c_powered:
            return ua
        for dev in self.i2c_devices.values():
            ua += dev.sleep_current_ua()
        return ua

    def _sleep(self, sleep_ms: float | None) -> None:
        self.sleep_start = self.t
        self.sleep_ua = self.sleep_current_ua()
        t_timer = math.inf if sleep_ms is None else self.t + max(0.0, sleep_ms) / 1000.0
        self._arm_wake(self.t, t_timer)

    def _arm_wake(self, t_from: float, t_timer: float) -> None:
        """Schedule the first wake (pin or timer) after ``t_from``.

        Pin wakes are searched a window at a time (to the simulation's horizon, at least a
        day): when the window ends before the timer, a continuation picks the search up
        there, so a run longer than the scenario still sees every pin wake.
        """
        window_end = max(self.sim.horizon_s, t_from + WAKE_WINDOW_S)
        limit = min(t_timer, window_end)
        t_wake, reason = t_timer, TIMER_WAKE
        if self.ext0 is not None:
            w = self.wires.get(self.ext0[0]) or ConstWire(0)
            tw = w.time_at_level(t_from, self.ext0[1], limit)
            if tw is not None and tw < t_wake:
                t_wake, reason = tw, EXT0_WAKE
        if self.ext1 is not None:
            pins, lvl = self.ext1
            for p in pins:
                w = self.wires.get(p) or ConstWire(0)
                tw = w.time_at_level(t_from, lvl, min(limit, t_wake))
                if tw is not None and tw < t_wake:
                    t_wake, reason = tw, GPIO_WAKE if self.chip == "esp32-c3" else EXT1_WAKE
        if reason == TIMER_WAKE and t_timer > window_end:
            if self.ext0 is None and self.ext1 is None:
                if math.isinf(t_timer):
                    return  # asleep until a fault or the end of the run
            else:
                self.sim.engine.at(window_end, self._continue_sleep(t_timer))
                return
        self.sim.engine.at(t_wake, self._event(DEEPSLEEP_RESET, reason))

    def _continue_sleep(self, t_timer: float) -> Any:
        gen = self.gen

        def resume(t: float) -> None:
            if gen == self.gen:
                self._arm_wake(t, t_timer)

        return resume

    # ------------------------------------------------------------------ faults
    def fault(self, t: float, kind: str, value: float = 0.0) -> None:
        if kind == "clock_jump":
            self.clock_offset_s += value
            return
        self.gen += 1  # cancel the pending wake
        if self.sleep_start is not None:
            dt = max(0.0, t - self.sleep_start)
            self.meter.add("sleep", self.profile.deep_sleep_ua * dt)
            self.meter.add("sleep_sensor", (self.sleep_ua - self.profile.deep_sleep_ua) * dt)
            self.sleep_start = None
        self.held.clear()  # a reset or power loss releases pad holds
        if kind == "reboot":
            self.rtc_mem = b""
            self.boot(max(t, self.t), HARD_RESET, 0)
        elif kind in ("brownout", "power_loss"):
            self.rtc_mem = b""
            self.nvs_pending.clear()
            for dev in self.i2c_devices.values():
                dev.power_on_reset()
            down = max(0.0, value)
            self.sim.engine.at(max(t, self.t) + down, self._event(PWRON_RESET, 0))
        else:
            raise ValueError(f"unknown fault {kind!r}")

    # ------------------------------------------------------------------ summary
    def charge_to(self, t_end: float) -> dict[str, float]:
        uc = dict(self.meter.uc)
        if self.sleep_start is not None and t_end > self.sleep_start:
            dt = t_end - self.sleep_start
            uc["sleep"] = uc.get("sleep", 0.0) + self.profile.deep_sleep_ua * dt
            uc["sleep_sensor"] = uc.get("sleep_sensor", 0.0) + (self.sleep_ua - self.profile.deep_sleep_ua) * dt
        return uc
