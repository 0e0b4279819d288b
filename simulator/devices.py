"""Simulated parts at register level, and the wires from the world to the node's pins.

Each part answers the I2C transactions its datasheet defines and raises ``OSError`` (as
the MicroPython port does for a NACK) for anything it would not acknowledge.
"""

from __future__ import annotations

import errno
import math
import random
import struct
from math import cos as _cos
from math import pi as _PI
from typing import TYPE_CHECKING, Final, Protocol

from simulator.bins import Bin
from simulator.parking import ParkingSpace
from simulator.part_registers import (
    LIS3MDL_LSB_PER_GAUSS,
    VL53L1X_NREGS,
    lis3mdl_int_src,
    lis3mdl_read_only,
    lis3mdl_registers,
    lis3mdl_stored,
    vl53l1x_registers,
)
from simulator.water import Household
from simulator.world import DAY_S as _DAY_S
from simulator.world import gauss

if TYPE_CHECKING:
    from simulator.node import SimNode

_LIS3MDL_SENS: Final = {fs: float(s) for fs, s in enumerate(LIS3MDL_LSB_PER_GAUSS)}
_PACK_XYZ: Final = struct.Struct("<hhh").pack  # OUT_X_L..OUT_Z_H
_PACK_SXYZ: Final = struct.Struct("<Bhhh").pack  # STATUS_REG, OUT_X_L..OUT_Z_H
_BYTES: Final = tuple(bytes((i,)) for i in range(256))  # one-byte register reads, no allocation
# LIS3MDL supply current by X/Y operating mode (DocID024204 Table 3: 40 uA low-power ...
# 270 uA ultra-high-performance); a board file may override with "lis3mdl_ua".
_LIS3MDL_OM_UA: Final = {0: 40.0, 1: 80.0, 2: 150.0, 3: 270.0}


class I2CDevice(Protocol):
    address: int

    def read(self, reg: int, n: int) -> bytes: ...

    def write(self, reg: int, data: bytes) -> None: ...

    def sleep_current_ua(self) -> float: ...


class Wire(Protocol):
    """A signal from the world into a pin."""

    def level(self, t: float) -> int: ...

    def time_at_level(self, t0: float, level: int, t_limit: float) -> float | None:
        """First time in [t0, t_limit] the line is at ``level``; None if it is not."""
        ...


def nack() -> OSError:
    return OSError(errno.ENODEV, "ENODEV")


class LIS3MDL:
    """ST LIS3MDL magnetometer (DocID024204) on the register map of simulator/part_registers.py,
    sampling the parking space's field at the node's time."""

    def __init__(self, node: SimNode, space: ParkingSpace, rng: random.Random, address: int = 0x1C) -> None:
        self.node = node
        self.space = space
        self.rng = rng
        self.address = address
        self.regs = lis3mdl_registers()
        self.latched = False
        self.latch_src = 0
        self._sample: tuple[int, int, int] = (0, 0, 0)
        self._sample_t = -1.0
        self._t_day0 = node.sim.t_day0
        self._field = space.field_gauss

    def power_on_reset(self) -> None:
        self.__init__(self.node, self.space, self.rng, self.address)  # type: ignore[misc]

    # -- registers
    def _sens(self) -> float:
        return _LIS3MDL_SENS[(self.regs[0x21] >> 5) & 3]

    def _continuous(self) -> bool:
        return (self.regs[0x22] & 3) == 0

    def _lsb(self, t: float, noisy: bool) -> tuple[int, int, int]:
        # ambient_temperature_c(t, t_day0), inlined (the same expression, bit for bit)
        temp_c = 12.0 - 6.0 * _cos(((((t + self._t_day0) % _DAY_S) / 3600.0) - 5.0) / 24.0 * 2 * _PI)
        x, y, z = self._field(t, temp_c, noisy)
        s = _LIS3MDL_SENS[(self.regs[0x21] >> 5) & 3]
        # round() then clamp to int16, as the part saturates its output registers
        xi = round(x * s)
        yi = round(y * s)
        zi = round(z * s)
        if -32768 <= xi <= 32767 and -32768 <= yi <= 32767 and -32768 <= zi <= 32767:
            return (xi, yi, zi)
        return (xi if -32768 <= xi <= 32767 else (32767 if xi > 0 else -32768),
                yi if -32768 <= yi <= 32767 else (32767 if yi > 0 else -32768),
                zi if -32768 <= zi <= 32767 else (32767 if zi > 0 else -32768))

    def read(self, reg: int, n: int) -> bytes:
        reg &= 0x7F  # MSB of the sub-address is the auto-increment flag over I2C
        t = self.node.t
        if reg == 0x28 and n == 6:  # OUT_X_L..OUT_Z_H: one sample, little endian
            smp = self._sample = self._lsb(t, True)
            self._sample_t = t
            return _PACK_XYZ(*smp)
        if reg == 0x27 and n == 7:  # STATUS, then OUT_X_L..OUT_Z_H from the same sample
            if (self.regs[0x22] & 3) == 3:
                return _PACK_SXYZ(0, *self._sample)  # power-down: no new data, registers hold
            smp = self._sample = self._lsb(t, True)
            self._sample_t = t
            return _PACK_SXYZ(0x0F, *smp)
        if n == 1:
            return _BYTES[self._read1(reg & 0x3F, t)]
        out = bytearray()
        for r in range(reg, reg + n):
            out.append(self._read1(r & 0x3F, t))
        return bytes(out)

    def _read1(self, r: int, t: float) -> int:
        if 0x28 <= r <= 0x2D:
            if r == 0x28 or self._sample_t != t:
                self._sample = self._lsb(t, True)
                self._sample_t = t
            v = self._sample[(r - 0x28) // 2] & 0xFFFF
            return (v >> 8) if (r & 1) else (v & 0xFF)
        if r in (0x2E, 0x2F):
            v = round((self.node.temperature_c(t) - 25.0) * 8) & 0xFFFF
            return (v >> 8) if r == 0x2F else v & 0xFF
        if r == 0x27:
            return 0x0F if (self.regs[0x22] & 3) != 3 else 0x00
        if r == 0x31:
            src = self._int_src(t)
            if src:
                src |= 1  # INT: an event is signalled
            if self.latched:
                src |= self.latch_src | 1
            self.latched = False
            self.latch_src = 0
            return src
        return self.regs[r]

    def write(self, reg: int, data: bytes) -> None:
        reg &= 0x7F
        regs = self.regs
        r = reg & 0x3F
        if len(data) == 1 and ((0x20 <= r <= 0x24 and r != 0x21) or r == 0x30):  # CTRL1/3/4/5, INT_CFG
            regs[r] = data[0]
            return
        for i, b in enumerate(data):
            r = (reg + i) & 0x3F
            if not lis3mdl_read_only(r):
                regs[r] = lis3mdl_stored(r, b)

    # -- interrupt generator (INT_CFG 0x30, INT_THS 0x32/0x33)
    def _int_src(self, t: float, noisy: bool = True) -> int:
        regs = self.regs
        cfg = regs[0x30]
        if not (cfg & 1) or (regs[0x22] & 3) != 0:
            return 0
        ths = (regs[0x32] | (regs[0x33] << 8)) & 0x7FFF
        x, y, z = self._lsb(t, noisy)
        return lis3mdl_int_src(cfg, ths, x, y, z)

    def int_active(self, t: float) -> bool:
        if self.latched:
            return True
        return self._int_src(t, noisy=False) != 0

    def int_level(self, t: float) -> int:
        if not self.node.i2c_powered:
            return 0  # an unpowered part drives nothing (the line reads low)
        active_high = bool(self.regs[0x30] & 0x04)
        return int(self.int_active(t) == active_high)

    def time_at_level(self, t0: float, level: int, t_limit: float) -> float | None:
        if self.int_level(t0) == level:
            return t0
        if not self.node.i2c_powered:
            return None
        cfg = self.regs[0x30]
        if not (cfg & 1) or (self.regs[0x22] & 3) != 0:
            return None  # no interrupt generator running: the line stays where it is
        latch = bool(cfg & 0x02)
        want_active = level == int(bool(cfg & 0x04))
        # The field changes at world events and drifts with temperature: check both.
        pts = self.space.change_points(t0, t_limit)
        h = math.floor(t0 / 900.0) + 1
        while h * 900.0 <= t_limit:
            pts.append(h * 900.0)
            h += 1
        pts.sort()
        for t in pts:
            src = self._int_src(t, noisy=False)
            if src and latch:
                self.latched = True
                self.latch_src = src
            if (self.latched or src != 0) == want_active:
                return t
        return None

    def sleep_current_ua(self) -> float:
        if not self._continuous():
            return self.node.profile.current_ua("lis3mdl_pd_ua", 1.0)
        om = (self.regs[0x20] >> 5) & 3
        odr_hz = (0.625, 1.25, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)[(self.regs[0x20] >> 2) & 7]
        if om == 0 and odr_hz <= 1.25:
            return self.node.profile.current_ua("lis3mdl_lp_ua", 2.3)
        return _LIS3MDL_OM_UA[om] * min(1.0, odr_hz / 20.0) + 1.0


class LIS3MDLIntWire:
    def __init__(self, dev: LIS3MDL) -> None:
        self.dev = dev

    def level(self, t: float) -> int:
        return self.dev.int_level(t)

    def time_at_level(self, t0: float, level: int, t_limit: float) -> float | None:
        return self.dev.time_at_level(t0, level, t_limit)


class VL53L1X:
    """ST VL53L1X ToF ranger, 16-bit register addresses as ST's ULD uses them, on the register
    map of simulator/part_registers.py, ranging the bin's distance at the node's time."""

    # ULD VL53L1X_GetTimingBudgetInMs: RANGE_CONFIG__TIMEOUT_MACROP_A_HI (0x5E, 16 bit) ->
    # timing budget in ms (short and long distance modes). The default configuration
    # block writes 0x01CC there: 100 ms.
    TIMING_BUDGET_MS: Final = {
        0x001D: 15.0, 0x0051: 20.0, 0x001E: 20.0, 0x00D6: 33.0, 0x0060: 33.0, 0x01AE: 50.0,
        0x00AD: 50.0, 0x02E1: 100.0, 0x01CC: 100.0, 0x03E1: 200.0, 0x02D9: 200.0,
        0x0591: 500.0, 0x048F: 500.0,
    }
    # Indices 0x0000.._NREG-1 (the ULD's whole map: configuration block, results, model id)
    # live in a bytearray; any other index in a dict.
    _NREG: Final = VL53L1X_NREGS

    def __init__(self, node: SimNode, bin_: Bin, rng: random.Random, address: int = 0x29) -> None:
        self.node = node
        self.bin = bin_
        self.rng = rng
        self.address = address
        self.regs = vl53l1x_registers()
        self.far: dict[int, int] = {}
        self.ranging = False
        self.ready_at: float | None = None
        self.noise_mm = 5.0
        self.fail_p = 0.02

    def power_on_reset(self) -> None:
        self.__init__(self.node, self.bin, self.rng, self.address)  # type: ignore[misc]

    def ranging_s(self) -> float:
        macrop = (self.regs[0x005E] << 8) | self.regs[0x005F]
        return self.TIMING_BUDGET_MS.get(macrop, 100.0) / 1000.0

    def _polarity(self) -> int:
        return 0 if self.regs[0x0030] & 0x10 else 1

    def _result(self) -> None:
        mm = self.bin.distance_mm(self.node.t) + gauss(self.rng, self.noise_mm)
        status = 9 if self.rng.random() >= self.fail_p else self.rng.choice((4, 5, 7))
        mm_i = max(0, min(0xFFFF, int(mm)))
        regs = self.regs
        regs[0x0089] = status
        regs[0x0096] = mm_i >> 8
        regs[0x0097] = mm_i & 0xFF

    def read(self, reg: int, n: int) -> bytes:
        regs = self.regs
        if self.ranging and self.ready_at is not None and self.node.t >= self.ready_at:
            pol = 0 if regs[0x0030] & 0x10 else 1
            if regs[0x0031] & 1 != pol:
                self._result()
                regs[0x0031] = pol
        end = reg + n
        if end <= self._NREG:
            return _BYTES[regs[reg]] if n == 1 else bytes(regs[reg:end])
        far = self.far
        return bytes(regs[r] if r < self._NREG else far.get(r, 0) for r in range(reg, end))

    def write(self, reg: int, data: bytes) -> None:
        regs = self.regs
        end = reg + len(data)
        if end == reg + 1 and reg != 0x0086 and reg != 0x0087:  # a plain register
            if reg < self._NREG:
                regs[reg] = data[0]
            else:
                self.far[reg] = data[0]
            return
        if end <= self._NREG:
            regs[reg:end] = data
        else:
            for i, b in enumerate(data):
                if reg + i < self._NREG:
                    regs[reg + i] = b
                else:
                    self.far[reg + i] = b
        if reg <= 0x0087 < end:
            mode = regs[0x0087]
            self.ranging = mode in (0x40, 0x10)
            self.ready_at = self.node.t + self.ranging_s() if self.ranging else None
            regs[0x0031] = 1 - self._polarity()
        if reg <= 0x0086 < end and regs[0x0086] & 1:
            regs[0x0031] = 1 - self._polarity()
            if self.ranging:
                self.ready_at = self.node.t + self.ranging_s()

    def sleep_current_ua(self) -> float:
        # Software standby between measurements (VL53L1X datasheet: ~5 uA HW standby class).
        return self.node.profile.current_ua("vl53l1x_standby_ua", 5.0)


class Echo:
    """JSN-SR04T echo line: time_pulse_us measures the round trip of one ping."""

    def __init__(self, node: SimNode, bin_: Bin) -> None:
        self.node = node
        self.bin = bin_

    def pulse_us(self, t: float) -> int | None:
        if not self.node.i2c_powered:
            return None  # unpowered ranger: no echo
        mm = self.bin.measured_mm(t)
        if mm is None:
            return None
        c_m_s = 331.3 + 0.606 * self.node.temperature_c(t)  # speed of sound with temperature
        return int(2.0 * mm / 1000.0 / c_m_s * 1e6)

    def level(self, t: float) -> int:
        return 0

    def time_at_level(self, t0: float, level: int, t_limit: float) -> float | None:
        return t0 if level == 0 else None


class PulseWire:
    """Reed switch on a water meter: closed (pin pulled low) for half of each unit of volume."""

    def __init__(self, house: Household, litres_per_pulse: float, active_low: bool = True) -> None:
        self.house = house
        self.lpp = litres_per_pulse
        self.active_low = active_low

    def _closed(self, t: float) -> bool:
        phase = (self.house.volume_l(t) / self.lpp) % 1.0
        return phase >= 0.5

    def level(self, t: float) -> int:
        closed = self._closed(t)
        return int(not closed) if self.active_low else int(closed)

    def time_at_level(self, t0: float, level: int, t_limit: float) -> float | None:
        if self.level(t0) == level:
            return t0
        v = self.house.volume_l(t0)
        k = math.floor(v / self.lpp)
        target = (k + 0.5) * self.lpp if not self._closed(t0) else (k + 1) * self.lpp
        t = self.house.time_of_volume(target + 1e-9, t0, t_limit)
        return t

    def edges(self, t0: float, t1: float) -> list[float]:
        out: list[float] = []
        t = t0
        lvl = self.level(t0)
        while True:
            nt = self.time_at_level(t, 1 - lvl, t1)
            if nt is None or nt > t1:
                return out
            out.append(nt)
            lvl = 1 - lvl
            t = nt


class ConstWire:
    def __init__(self, value: int) -> None:
        self.value = value

    def level(self, t: float) -> int:
        return self.value

    def time_at_level(self, t0: float, level: int, t_limit: float) -> float | None:
        return t0 if level == self.value else None
