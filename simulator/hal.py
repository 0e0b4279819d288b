"""The HAL object for one simulated node (docs/HAL.md), mirroring micropython-esp32-stubs.

``hal.machine``, ``hal.esp32``, ``hal.bluetooth`` and ``hal.time`` are small objects bound
to one ``SimNode``; the firmware cannot tell them from the modules on a board, down to the
exceptions a simulated part raises.
"""

from __future__ import annotations

import errno
import io
import time as _time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from simulator import esp32_port as port

if TYPE_CHECKING:
    from simulator.hal_contract import HAL
    from simulator.node import SimNode

_TICKS_PERIOD: Final = 1 << 30  # MicroPython's ticks wrap at 2**30
_TICKS_HALF: Final = _TICKS_PERIOD // 2


class DeepSleep(BaseException):
    """machine.deepsleep() called inside the cycle: unwinds to the simulator."""

    def __init__(self, ms: int | None) -> None:
        super().__init__(ms)
        self.ms = ms


class SoftReset(BaseException):
    """machine.reset()/soft_reset() called inside the cycle."""


class WatchdogReset(BaseException):
    """The node went longer than the WDT timeout without a feed."""


# --------------------------------------------------------------------------- time


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


# --------------------------------------------------------------------------- machine


class SimPin:
    IN: Final = 1
    OUT: Final = 3
    OPEN_DRAIN: Final = 7
    PULL_UP: Final = 2
    PULL_DOWN: Final = 1
    PULL_HOLD: Final = 4
    IRQ_RISING: Final = 1
    IRQ_FALLING: Final = 2
    WAKE_LOW: Final = 4
    WAKE_HIGH: Final = 5
    DRIVE_0: Final = 0
    DRIVE_1: Final = 1
    DRIVE_2: Final = 2
    DRIVE_3: Final = 3

    __slots__ = ("_n", "_out", "handler", "id", "mode", "pull")

    def __init__(self, node: SimNode, id: int, mode: int = -1, pull: int = -1, *,
                 value: Any = None, drive: int = -1, alt: int = -1, hold: bool | None = None) -> None:
        if not isinstance(id, int) or not 0 <= id <= 48:
            raise ValueError("invalid pin")
        self._n = node
        self.id = id
        self.mode = mode
        self.pull = pull
        self.handler: Callable[[SimPin], None] | None = None
        if value is None and hold is None:
            self._out = 0
            return
        self._out = 0 if value is None else int(bool(value))
        # ESP32 port: a hold is released before the pin is reconfigured, set again after.
        held = node.held
        if hold is not None:
            held.pop(id, None)
        if value is not None and id not in held:
            node.set_pin_out(id, self._out)
        if hold:
            held[id] = node.pin_out.get(id, 0)

    def init(self, mode: int = -1, pull: int = -1, *, value: Any = None, drive: int = -1, alt: int = -1,
             hold: bool | None = None) -> None:
        if hold is not None:
            self._n.held.pop(self.id, None)
        if mode != -1:
            self.mode = mode
        if pull != -1:
            self.pull = pull
        if value is not None:
            self.value(value)
        if hold:
            self._n.held[self.id] = self._n.pin_out.get(self.id, 0)

    def value(self, x: Any = None) -> int | None:
        if x is None:
            if self.mode == self.OUT:
                return self._n.pin_out.get(self.id, 0)
            return self._n.pin_level(self.id, self.pull)
        if self.id in self._n.held:
            return None  # a held pad keeps its level until the hold is released
        self._out = int(bool(x))
        self._n.set_pin_out(self.id, self._out)
        return None

    __call__ = value

    def on(self) -> None:
        self.value(1)

    def off(self) -> None:
        self.value(0)

    def irq(self, handler: Callable[[SimPin], None] | None = None, trigger: int = 3, *,
            priority: int = 1, wake: int | None = None, hard: bool = False) -> None:
        # Recorded; the firmware counts pulses by pin wake, so edges while awake are not fed.
        self.handler = handler

    def __repr__(self) -> str:
        return f"Pin({self.id})"


class _PinFactory:
    IN: Final = SimPin.IN
    OUT: Final = SimPin.OUT
    OPEN_DRAIN: Final = SimPin.OPEN_DRAIN
    PULL_UP: Final = SimPin.PULL_UP
    PULL_DOWN: Final = SimPin.PULL_DOWN
    PULL_HOLD: Final = SimPin.PULL_HOLD
    IRQ_RISING: Final = SimPin.IRQ_RISING
    IRQ_FALLING: Final = SimPin.IRQ_FALLING
    WAKE_LOW: Final = SimPin.WAKE_LOW
    WAKE_HIGH: Final = SimPin.WAKE_HIGH

    __slots__ = ("_n",)

    def __init__(self, node: SimNode) -> None:
        self._n = node

    def __call__(self, id: int, mode: int = -1, pull: int = -1, *, value: Any = None,
                 drive: int = -1, alt: int = -1, hold: bool | None = None) -> SimPin:
        if value is None and hold is None:
            return SimPin(self._n, id, mode, pull)
        return SimPin(self._n, id, mode, pull, value=value, hold=hold)  # drive, alt: no effect here


def _pin_id(p: Any) -> int:
    return p.id if isinstance(p, SimPin) else int(p)


class SimI2C:
    """machine.I2C / SoftI2C: register transactions dispatched to the node's devices."""

    __slots__ = ("_n", "freq")

    def __init__(self, node: SimNode, id: int = -1, *, scl: Any = None, sda: Any = None,
                 freq: int = 400_000, timeout: int = 50_000) -> None:
        self._n = node
        self.freq = freq

    def init(self, *, scl: Any = None, sda: Any = None, freq: int = 400_000) -> None:
        self.freq = freq

    def _dev(self, addr: int) -> Any:
        dev = self._n.i2c_devices.get(addr)
        if dev is None or not self._n.i2c_powered:
            self._n.advance(30 * 9 / self.freq)
            raise OSError(errno.ENODEV, "ENODEV")
        return dev

    def _cost(self, nbytes: int, addrsize: int) -> None:
        # START + address + register address + data + STOP, 9 bit times each byte.
        self._n.advance((3 + addrsize // 8 + nbytes) * 9 / self.freq + 20e-6)

    def scan(self) -> list[int]:
        return sorted(self._n.i2c_devices) if self._n.i2c_powered else []

    def readfrom_mem(self, addr: int, memaddr: int, nbytes: int, /, *, addrsize: int = 8) -> bytes:
        n = self._n
        dev = n.i2c_devices.get(addr)
        if dev is None or not n.i2c_powered:
            return self._dev(addr)  # type: ignore[no-any-return]  # raises the NACK
        n.advance((3 + (addrsize >> 3) + nbytes) * 9 / self.freq + 20e-6)
        data: bytes = dev.read(memaddr, nbytes)
        return data

    def readfrom_mem_into(self, addr: int, memaddr: int, buf: Any, /, *, addrsize: int = 8) -> None:
        n = self._n
        dev = n.i2c_devices.get(addr)
        if dev is None or not n.i2c_powered:
            dev = self._dev(addr)  # raises the NACK
        nbytes = len(buf)
        n.advance((3 + (addrsize >> 3) + nbytes) * 9 / self.freq + 20e-6)
        data = dev.read(memaddr, nbytes)
        buf[: len(data)] = data

    def writeto_mem(self, addr: int, memaddr: int, buf: Any, /, *, addrsize: int = 8) -> None:
        n = self._n
        dev = n.i2c_devices.get(addr)
        if dev is None or not n.i2c_powered:
            dev = self._dev(addr)  # raises the NACK
        n.advance((3 + addrsize // 8 + len(buf)) * 9 / self.freq + 20e-6)
        dev.write(memaddr, bytes(buf))

    def readfrom(self, addr: int, nbytes: int, stop: bool = True, /) -> bytes:
        return self.readfrom_mem(addr, 0, nbytes)

    def writeto(self, addr: int, buf: Any, stop: bool = True, /) -> int:
        b = bytes(buf)
        if b:
            self.writeto_mem(addr, b[0], b[1:])
        else:
            self._dev(addr)
        return 1


class SimADC:
    ATTN_0DB: Final = 0
    ATTN_2_5DB: Final = 1
    ATTN_6DB: Final = 2
    ATTN_11DB: Final = 3
    WIDTH_12BIT: Final = 12

    __slots__ = ("_n", "atten_", "pin")

    def __init__(self, node: SimNode, pin: Any, *, atten: int = 3) -> None:
        self._n = node
        self.pin = _pin_id(pin)
        self.atten_ = atten

    def init(self, *, sample_ns: int = 0, atten: int = 3) -> None:
        self.atten_ = atten

    def atten(self, atten: int) -> None:
        self.atten_ = atten

    def width(self, bits: int) -> None:
        return None

    def read_uv(self) -> int:
        self._n.advance(40e-6)
        return self._n.adc_uv(self.pin)

    def read_u16(self) -> int:
        return min(65535, self.read_uv() * 65535 // 3_100_000)

    def read(self) -> int:
        return self.read_u16() >> 4


class _ADCFactory:
    ATTN_0DB: Final = 0
    ATTN_2_5DB: Final = 1
    ATTN_6DB: Final = 2
    ATTN_11DB: Final = 3
    WIDTH_12BIT: Final = 12

    __slots__ = ("_n",)

    def __init__(self, node: SimNode) -> None:
        self._n = node

    def __call__(self, pin: Any, *, atten: int = 3) -> SimADC:
        return SimADC(self._n, pin, atten=atten)


class SimUART:
    __slots__ = ("_n", "baudrate", "id")

    def __init__(self, node: SimNode, id: int, baudrate: int = 115200, **kwargs: Any) -> None:
        if node.serial is None:
            raise ValueError("UART not wired on this node")
        self._n = node
        self.id = id
        self.baudrate = baudrate

    def init(self, baudrate: int = 115200, **kwargs: Any) -> None:
        self.baudrate = baudrate

    def write(self, buf: Any) -> int:
        data = bytes(buf)
        n = self._n
        n.advance(len(data) * 10 / self.baudrate, "uart")  # 8N1: 10 bit times a byte
        n.uart_busy = True
        assert n.serial is not None
        n.serial.node_write(n, data)
        return len(data)

    def any(self) -> int:
        assert self._n.serial is not None
        return int(self._n.serial.rx_available(self._n))

    def read(self, nbytes: int | None = None) -> bytes | None:
        assert self._n.serial is not None
        data = self._n.serial.rx_read(self._n, nbytes)
        return data or None

    def readinto(self, buf: Any, nbytes: int | None = None) -> int | None:
        data = self.read(len(buf) if nbytes is None else nbytes)
        if not data:
            return None
        buf[: len(data)] = data
        return len(data)

    def readline(self) -> bytes | None:
        return self.read()

    def deinit(self) -> None:
        self._n.uart_busy = False


class _UARTFactory:
    __slots__ = ("_n",)

    def __init__(self, node: SimNode) -> None:
        self._n = node

    def __call__(self, id: int, baudrate: int = 115200, **kwargs: Any) -> SimUART:
        return SimUART(self._n, id, baudrate, **kwargs)


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
        self.Pin = _PinFactory(node)
        self.ADC = _ADCFactory(node)
        self.UART = _UARTFactory(node)
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
        return self._n.time_pulse_us(_pin_id(pin), pulse_level, timeout_us)

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


# --------------------------------------------------------------------------- esp32


class SimNVS:
    __slots__ = ("_n", "_ns")

    def __init__(self, node: SimNode, namespace: str) -> None:
        self._n = node
        self._ns = namespace

    def _get(self, key: str) -> Any:
        n = self._n
        k = (self._ns, key)
        v = n.nvs_pending[k] if k in n.nvs_pending else n.nvs.get(k)
        if v is None:
            raise OSError(errno.ENOENT, "ESP_ERR_NVS_NOT_FOUND")
        return v

    def get_i32(self, key: str, /) -> int:
        v = self._get(key)
        if not isinstance(v, int):
            raise OSError(errno.EINVAL, "ESP_ERR_NVS_TYPE_MISMATCH")
        return v

    def set_i32(self, key: str, value: int, /) -> None:
        if not -(1 << 31) <= value < (1 << 31):
            raise OverflowError("overflow converting long int to machine word")
        self._n.nvs_pending[(self._ns, key)] = int(value)

    def get_blob(self, key: str, buffer: Any, /) -> int:
        v = self._get(key)
        if not isinstance(v, bytes):
            raise OSError(errno.EINVAL, "ESP_ERR_NVS_TYPE_MISMATCH")
        if len(v) > len(buffer):
            raise OSError(errno.EINVAL, "ESP_ERR_NVS_INVALID_LENGTH")
        buffer[: len(v)] = v
        return len(v)

    def set_blob(self, key: str, value: Any, /) -> None:
        self._n.nvs_pending[(self._ns, key)] = bytes(value)

    def erase_key(self, key: str, /) -> None:
        self._get(key)
        self._n.nvs_pending[(self._ns, key)] = None

    def commit(self) -> None:
        n = self._n
        for k, v in n.nvs_pending.items():
            if v is None:
                n.nvs.pop(k, None)
            else:
                n.nvs[k] = v
            n.flash_writes += 1
        n.nvs_pending.clear()
        n.advance(2e-3)  # a flash page write (ESP-IDF NVS: ms class)


class SimULP:
    """Present so code that probes for it imports; the simulator runs no ULP programs."""

    RESERVE_MEM: Final = 2040

    def __init__(self) -> None:
        return None

    def set_wakeup_period(self, period_index: int, period_us: int, /) -> None:
        return None

    def load_binary(self, load_addr: int, program_binary: Any, /) -> None:
        raise OSError(errno.EOPNOTSUPP, "simulator: no ULP")

    def run(self, entry_point: int, /) -> None:
        raise OSError(errno.EOPNOTSUPP, "simulator: no ULP")


class SimEsp32:
    WAKEUP_ALL_LOW: Final = False
    WAKEUP_ANY_HIGH: Final = True
    HEAP_DATA: Final = 4
    HEAP_EXEC: Final = 1

    def __init__(self, node: SimNode) -> None:
        self._n = node
        self.ULP = SimULP
        if node.chip != "esp32":
            self.mcu_temperature = self._mcu_temperature
        # The port compiles each wake source only where the SoC has it (modesp32.c:
        # SOC_PM_SUPPORT_EXT0/EXT1_WAKEUP, SOC_GPIO_SUPPORT_DEEPSLEEP_WAKEUP): the C3 has
        # wake_on_gpio and no ext0/ext1, the ESP32 the reverse.
        if node.chip == "esp32-c3":
            self.wake_on_gpio = self._wake_on_gpio
        else:
            self.wake_on_ext0 = self._wake_on_ext0
            self.wake_on_ext1 = self._wake_on_ext1

    def NVS(self, namespace: str) -> SimNVS:
        return SimNVS(self._n, namespace)

    def _wake_on_ext0(self, pin: Any, level: bool | int, /) -> None:
        self._n.ext0 = None if pin is None else (_pin_id(pin), int(bool(level)))

    def _wake_on_ext1(self, pins: Any, level: bool | int, /) -> None:
        self._n.ext1 = None if not pins else ([_pin_id(p) for p in pins], int(bool(level)))

    def _wake_on_gpio(self, pins: Any, level: bool | int, /) -> None:
        ids = [_pin_id(p) for p in pins] if pins else []
        bad = [i for i in ids if i not in self._n.rtc_wake_pins]
        if bad:  # the port: "invalid pin" for a pin that cannot wake the chip from deep sleep
            raise ValueError(f"invalid pin {bad[0]}")
        self._n.ext1 = (ids, int(bool(level))) if ids else None  # same any-high/all-low rule

    def wake_on_ulp(self, wake: bool, /) -> None:
        return None

    def wake_on_touch(self, wake: bool, /) -> None:
        return None

    def _mcu_temperature(self) -> int:
        return round(self._n.temperature_c(self._n.t) + 8.0)  # die runs warmer than air

    def raw_temperature(self) -> int:
        return round((self._n.temperature_c(self._n.t) + 20.0) * 9 / 5 + 32)

    def idf_heap_info(self, capabilities: int) -> list[tuple[int, int, int, int]]:
        return [(112_000, 60_000, 50_000, 40_000)]


# --------------------------------------------------------------------------- bluetooth


class SimBLE:
    __slots__ = ("_active", "_n")

    def __init__(self, node: SimNode) -> None:
        self._n = node
        self._active = False

    def active(self, active: bool | None = None) -> bool | None:
        if active is None:
            return self._active
        if active and not self._active:
            self._n.ble_on()
        if not active:
            self._n.ble_stop_adv()
        self._active = bool(active)
        return None

    def config(self, *args: Any, **kwargs: Any) -> Any:
        if args and args[0] == "mac":
            return (0, self._n.ble_address_bytes())
        return None

    def irq(self, handler: Any) -> None:
        return None

    def gap_advertise(self, interval_us: int | None, adv_data: Any = None, *, resp_data: Any = None,
                      connectable: bool = True) -> None:
        if not self._active:
            raise OSError(errno.EPERM, "EPERM")
        if interval_us is None:
            self._n.ble_stop_adv()
            return
        if adv_data is not None and len(adv_data) > 31:
            raise ValueError("advertising data too long")
        self._n.ble_start_adv(int(interval_us), bytes(adv_data or b""))


class SimBluetooth:
    FLAG_READ: Final = 0x0002
    FLAG_WRITE: Final = 0x0008
    FLAG_NOTIFY: Final = 0x0010

    def __init__(self, node: SimNode) -> None:
        self._ble = SimBLE(node)

    def BLE(self) -> SimBLE:
        return self._ble


# --------------------------------------------------------------------------- files


class _WriteFile(io.StringIO):
    def __init__(self, node: SimNode, path: str) -> None:
        super().__init__()
        self._node = node
        self._path = path

    def close(self) -> None:
        if not self.closed:
            self._node.files[self._path] = self.getvalue().encode()
            self._node.flash_writes += 1
        super().close()


class _WriteBinFile(io.BytesIO):
    def __init__(self, node: SimNode, path: str) -> None:
        super().__init__()
        self._node = node
        self._path = path

    def close(self) -> None:
        if not self.closed:
            self._node.files[self._path] = self.getvalue()
            self._node.flash_writes += 1
        super().close()


class SimHAL:
    """The ``hal`` object of docs/HAL.md for one node."""

    def __init__(self, node: SimNode) -> None:
        self._n = node
        self.machine = SimMachine(node)
        self.esp32 = SimEsp32(node)
        self.bluetooth = SimBluetooth(node)
        self.time = SimTime(node)

    def open(self, path: str, mode: str = "r") -> io.IOBase:
        path = path.lstrip("/")
        files = self._n.files
        if "r" in mode:
            if path not in files:
                raise OSError(errno.ENOENT, path)
            data = files[path]
            return io.BytesIO(data) if "b" in mode else io.StringIO(data.decode())
        return _WriteBinFile(self._n, path) if "b" in mode else _WriteFile(self._n, path)

    def energy(self, state: str) -> None:
        self._n.declare(state)


def _contract(node: SimNode) -> HAL:
    """mypy holds SimHAL to the contract of docs/HAL.md (simulator/hal_contract.py) here."""
    return SimHAL(node)
