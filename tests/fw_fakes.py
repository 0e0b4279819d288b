"""Register-level fakes of the parts and a fake HAL that mirrors MicroPython's ESP32 API.

Written in the MicroPython subset (no typing, dataclasses or f-string `=`), so the same file
serves the CPython tests and the wake cycles on the MicroPython VM. One World is one node:
flash (files, NVS) survives power loss, RTC memory survives deep sleep only.

The port's reset and wake numbers (simulator/esp32_port.py) and the parts' register maps
(simulator/part_registers.py) are the simulator's own, imported (on the VM: mounted beside
this file); the HAL keeps the contract of simulator/hal_contract.py
(tests/test_hal_contract.py).
"""

try:
    from simulator import esp32_port as _port
    from simulator import part_registers as _regs
except ImportError:  # the MicroPython VM
    import esp32_port as _port
    import part_registers as _regs

ENODEV = 19
ENOENT = 2

PWRON_RESET = _port.PWRON_RESET
HARD_RESET = _port.HARD_RESET
WDT_RESET = _port.WDT_RESET
DEEPSLEEP_RESET = _port.DEEPSLEEP_RESET
SOFT_RESET = _port.SOFT_RESET
PIN_WAKE = _port.PIN_WAKE
EXT0_WAKE = _port.EXT0_WAKE
EXT1_WAKE = _port.EXT1_WAKE
TIMER_WAKE = _port.TIMER_WAKE
ULP_WAKE = _port.ULP_WAKE


def _s16_bytes(v):
    v &= 0xFFFF
    return bytes((v & 0xFF, v >> 8))


class FakeLIS3MDL:
    """LIS3MDL on the register map of simulator/part_registers.py, auto-increment on SUB(7).

    A new sample is taken when the field is set or a register is written (no clock), so
    reading INT_SRC clears a latched event until the next of those."""

    def __init__(self, field_nt=(20000, -5000, 42000), int_pin=None, world=None):
        self.regs = _regs.lis3mdl_registers()
        self.field_nt = list(field_nt)
        self.temp_raw = 0
        self.int_pin = int_pin
        self.world = world
        self.writes = []
        self.late_polls = 0  # STATUS reads that find no new sample after each one found
        self._late = 0

    def set_field(self, field_nt):
        self.field_nt = list(field_nt)
        self._update_int()

    def power_off(self):
        # Behind the load switch: registers back to their power-on values, INT undriven.
        self.regs = _regs.lis3mdl_registers()
        if self.int_pin is not None and self.world is not None:
            self.world.pins.pop(self.int_pin, None)

    def _lsb(self, i):
        return _regs.lis3mdl_lsb(self.field_nt[i] / 100000, (self.regs[0x21] >> 5) & 3)

    def _continuous(self):
        return self.regs[0x22] & 0x03 == 0

    def _drive_int(self):
        # INT_CFG IEA (bit 2), datasheet: 0 = active low, 1 = active high. The line is at
        # its active level while IEN is set and INT_SRC holds an event, else inactive.
        if self.int_pin is None or self.world is None:
            return
        cfg = self.regs[0x30]
        active = bool(cfg & 0x01) and bool(self.regs[0x31] & 0x01)
        high = bool(cfg & 0x04)
        self.world.pins[self.int_pin] = 1 if active == high else 0

    def _update_int(self):
        cfg = self.regs[0x30]
        if cfg & 0x01 and self._continuous():
            ths = self.regs[0x32] | (self.regs[0x33] << 8)
            src = _regs.lis3mdl_int_src(cfg, ths, self._lsb(0), self._lsb(1), self._lsb(2))
            if src:
                self.regs[0x31] = src | 0x01
            elif not cfg & 0x02:
                self.regs[0x31] = 0  # not latched (LIR = 0): INT_SRC follows the samples
        self._drive_int()

    def read(self, reg, n, addrsize):
        if addrsize != 8:
            raise OSError(ENODEV)
        inc = reg & 0x80
        reg &= 0x7F
        out = bytearray()
        for k in range(n):
            r = reg + k if inc else reg
            if 0x28 <= r <= 0x2D:
                if not self._continuous() and self.regs[0x22] & 0x03 != 1:
                    out.append(0)
                    continue
                out.append(_s16_bytes(self._lsb((r - 0x28) // 2))[(r - 0x28) & 1])
                if r == 0x2D:
                    self.regs[0x27] &= ~0x08
            elif r == 0x2E or r == 0x2F:
                out.append(_s16_bytes(self.temp_raw)[r - 0x2E])
            elif r == 0x27:
                ready = 0x08 if (self._continuous() or self.regs[0x22] & 3 == 1) else 0
                if ready and self._late:
                    self._late -= 1
                    ready = 0
                elif ready:
                    self._late = self.late_polls  # the next sample comes that much later
                out.append(ready)
            elif r == 0x31:
                out.append(self.regs[0x31])
                if self.regs[0x30] & 0x02:  # LIR: reading INT_SRC clears
                    self.regs[0x31] = 0
                    self._drive_int()
            else:
                out.append(self.regs[r] if r < len(self.regs) else 0)
        return bytes(out)

    def write(self, reg, data, addrsize):
        if addrsize != 8:
            raise OSError(ENODEV)
        inc = reg & 0x80
        reg &= 0x7F
        for k in range(len(data)):
            r = reg + k if inc else reg
            self.writes.append((r, data[k]))
            if not _regs.lis3mdl_read_only(r):
                self.regs[r] = _regs.lis3mdl_stored(r, data[k])
        self._update_int()


class FakeVL53L1X:
    """VL53L1X as the ULD sees it: 16-bit indices, model id, data-ready on GPIO__TIO_HV_STATUS."""

    def __init__(self, distances_mm=None, polls_per_range=3):
        self.regs = _regs.vl53l1x_registers()
        self.distances = list(distances_mm or [])
        self.default_mm = 800
        self.polls_per_range = polls_per_range
        self.ranging = False
        self.ready = False
        self.polls = 0
        self.config_written = False
        self.ranges_done = 0

    def _next_range(self):
        d = self.distances.pop(0) if self.distances else self.default_mm
        if d is None:
            self.regs[0x0089] = 4  # ULD raw status 4 -> range error
            d = 0
        else:
            self.regs[0x0089] = 9  # raw 9 -> range valid
        self.regs[0x0096] = (d >> 8) & 0xFF
        self.regs[0x0097] = d & 0xFF
        self.ranges_done += 1
        self.ready = True

    def _tio(self):
        if self.ranging and not self.ready:
            self.polls += 1
            if self.polls >= self.polls_per_range:
                self.polls = 0
                self._next_range()
        active_high = 0 if self.regs[0x0030] & 0x10 else 1
        return active_high if self.ready else 1 - active_high

    def read(self, reg, n, addrsize):
        if addrsize != 16:
            raise OSError(ENODEV)
        out = bytearray()
        for k in range(n):
            r = reg + k
            out.append(self._tio() if r == 0x0031 else (self.regs[r] if r < len(self.regs) else 0))
        return bytes(out)

    def write(self, reg, data, addrsize):
        if addrsize != 16:
            raise OSError(ENODEV)
        if reg == 0x2D and len(data) == 91:
            self.config_written = True
        for k in range(len(data)):
            r = reg + k
            v = data[k]
            if r < len(self.regs):
                self.regs[r] = v
            if r == 0x0087:
                self.ranging = v == 0x40
                self.ready = False
                self.polls = 0
            elif r == 0x0086 and v & 1:
                self.ready = False


class FakeJSN:
    """JSN-SR04T echo: each trigger pulse consumes one echo time (us) or None (no echo)."""

    def __init__(self, echoes_us=None):
        self.echoes = list(echoes_us or [])
        self.default_us = 5000
        self.triggers = 0


class World:
    """One node's hardware, across boots."""

    def __init__(self, config_text, board, hook=None):
        import json

        self.files = {"config.json": config_text, "board.json": json.dumps(board)}
        self.board = board
        self.nvs = {}
        self.nvs_writes = 0
        self.rtc_mem = b""
        self.clock_ms = 0
        self.power_on_ms = 0
        self.pins = {}  # levels driven onto the pads (by the test or a fake part)
        self.pulls = {}  # pin -> the pull last configured (an undriven pad reads it)
        self.modes = {}  # pin -> the mode last configured (Pin.IN, Pin.OUT ...)
        self.held = {}  # pin -> hold enabled (ESP32 Pin(..., hold=True))
        self.power_log = []  # (clock_ms, level) written to the sensor_power pin
        self.adc_uv = {}
        self.i2c_devices = {}
        self.jsn = None
        self.jsn_trig = None
        self.uart_peer = None  # fn(bytes written) -> bytes to receive
        self.uart_rx = bytearray()
        self.reset_cause = PWRON_RESET
        self.wake_reason = 0
        self.adverts = []
        self.ble_active = False
        self.ext0 = None
        self.ext1 = None
        self.gpio_wake = None  # ESP32-C3 esp32.wake_on_gpio: (pins, level)
        self.energy_log = []
        self.wdt_timeout_ms = None
        self.wdt_feeds = 0
        self.hook = hook
        self.out = []

    def sensors_powered(self):
        p = self.board.get("pins", {}).get("sensor_power")
        return p is None or self.pins.get(p, 0) == 1

    # --- node life ---
    def hal(self):
        return FakeHAL(self)

    def run_cycle(self, us_node):
        self.adverts = []
        ms = us_node.run_cycle(self.hal())
        return ms

    def sleep(self, ms, wake_reason=TIMER_WAKE):
        self.clock_ms += ms
        self.reset_cause = DEEPSLEEP_RESET
        self.wake_reason = wake_reason

    def power_loss(self, off_ms=1000):
        self.rtc_mem = b""
        self.held = {}
        self.modes = {}
        sp = self.board.get("pins", {}).get("sensor_power")
        if sp is not None:
            self.pins[sp] = 0
        self.clock_ms += off_ms
        self.power_on_ms = self.clock_ms
        self.reset_cause = PWRON_RESET
        self.wake_reason = 0
        self.ext0 = None
        self.ext1 = None
        self.gpio_wake = None

    def watchdog_reset(self):
        self.reset_cause = WDT_RESET
        self.wake_reason = 0

    def frames(self):
        """Frames advertised during the last cycle (manufacturer AD stripped)."""
        out = []
        for _, ad, _ in self.adverts:
            out.append(bytes(ad[4:]))
        return out

    def _tick(self):
        if self.hook is not None:
            self.hook()


def _make_pin(world):
    class Pin:
        IN = 1
        OUT = 3
        OPEN_DRAIN = 7
        PULL_UP = 2
        PULL_DOWN = 1
        IRQ_RISING = 1
        IRQ_FALLING = 2

        def __init__(self, id, mode=-1, pull=-1, *, value=None, hold=None):
            self.id = id
            self.init(mode, pull, value=value, hold=hold)

        def init(self, mode=-1, pull=-1, *, value=None, hold=None):
            if mode != -1:  # None (the port: leave the mode as it is) is kept as None
                world.modes[self.id] = mode
            if pull != -1:  # the port leaves the pad's pull alone when none is given
                world.pulls[self.id] = pull
            if value is not None:
                self.value(value)
            if hold is not None:
                world.held[self.id] = bool(hold)

        def value(self, x=None):
            if x is None:
                if world.modes.get(self.id) is None:
                    return 0  # never made an input since power-up: the pad's input buffer is off
                if self.id in world.pins:
                    return world.pins[self.id]
                return 1 if world.pulls.get(self.id) == Pin.PULL_UP else 0
            was = world.pins.get(self.id)
            world.pins[self.id] = 1 if x else 0
            if self.id == world.board.get("pins", {}).get("sensor_power"):
                world.power_log.append((world.clock_ms, world.pins[self.id]))
                if was == 1 and not x:
                    for d in world.i2c_devices.values():
                        if hasattr(d, "power_off"):
                            d.power_off()
            if self.id == world.jsn_trig and world.jsn is not None and x:
                world.jsn.triggers += 1
            return None

        def irq(self, handler=None, trigger=3, *, wake=None, hard=False):
            return None

    return Pin


def _make_i2c(world):
    class SoftI2C:
        def __init__(self, scl=None, sda=None, *, freq=400000, timeout=50000):
            self.freq = freq

        def _dev(self, addr):
            d = world.i2c_devices.get(addr)
            if d is None or not world.sensors_powered():
                raise OSError(ENODEV)
            return d

        def scan(self):
            return sorted(world.i2c_devices) if world.sensors_powered() else []

        def readfrom_mem(self, addr, memaddr, nbytes, *, addrsize=8):
            return self._dev(addr).read(memaddr, nbytes, addrsize)

        def readfrom_mem_into(self, addr, memaddr, buf, *, addrsize=8):
            data = self._dev(addr).read(memaddr, len(buf), addrsize)
            for i in range(len(buf)):
                buf[i] = data[i]

        def writeto_mem(self, addr, memaddr, buf, *, addrsize=8):
            self._dev(addr).write(memaddr, bytes(buf), addrsize)

    return SoftI2C


def _make_hw_i2c(soft):
    # The port's hardware bus: machine.I2C(id, *, scl, sda, freq, timeout) (micropython-esp32-stubs).
    class I2C(soft):
        def __init__(self, id, *, scl, sda, freq=400000, timeout=50000):
            soft.__init__(self, scl, sda, freq=freq, timeout=timeout)
            self.id = id

    return I2C


def _make_adc(world):
    class ADC:
        ATTN_0DB = 0
        ATTN_2_5DB = 1
        ATTN_6DB = 2
        ATTN_11DB = 3

        def __init__(self, pin, *, atten=None):
            self.pin = pin

        def read_uv(self):
            return world.adc_uv.get(self.pin.id, 1800000)

        def read_u16(self):
            return world.adc_uv.get(self.pin.id, 1800000) * 65535 // 3100000

    return ADC


def _make_uart(world):
    class UART:
        def __init__(self, id, baudrate=115200, *, tx=None, rx=None, **kw):
            self.id = id
            world.uart_pins = (tx, rx)  # None: the port's default pins (the flash on an ESP32)
            world.uart_port = (id, baudrate)

        def write(self, buf):
            if world.uart_peer is not None:
                world.uart_rx.extend(world.uart_peer(bytes(buf)) or b"")
            return len(buf)

        def any(self):
            return len(world.uart_rx)

        def read(self, nbytes=-1):
            if not world.uart_rx:
                return None
            n = len(world.uart_rx) if nbytes is None or nbytes < 0 else nbytes
            out = bytes(world.uart_rx[:n])
            world.uart_rx[:n] = b""  # MicroPython's bytearray has no item deletion
            return out

    return UART


def _make_rtc(world):
    class RTC:
        def __init__(self, id=0):
            pass

        def memory(self, data=None):
            if data is None:
                return bytes(world.rtc_mem)
            if len(data) > 2048:
                raise ValueError("buffer too long")
            world.rtc_mem = bytes(data)
            return None

    return RTC


def _make_wdt(world):
    class WDT:
        def __init__(self, *, id=0, timeout=5000):
            world.wdt_timeout_ms = timeout

        def feed(self):
            world.wdt_feeds += 1

    return WDT


class FakeMachine:
    PWRON_RESET = PWRON_RESET
    HARD_RESET = HARD_RESET
    WDT_RESET = WDT_RESET
    DEEPSLEEP_RESET = DEEPSLEEP_RESET
    SOFT_RESET = SOFT_RESET
    PIN_WAKE = PIN_WAKE
    EXT0_WAKE = EXT0_WAKE
    EXT1_WAKE = EXT1_WAKE
    TIMER_WAKE = TIMER_WAKE
    ULP_WAKE = ULP_WAKE

    def __init__(self, world):
        self._w = world
        self.Pin = _make_pin(world)
        self.SoftI2C = _make_i2c(world)
        self.I2C = _make_hw_i2c(self.SoftI2C)
        self.ADC = _make_adc(world)
        self.UART = _make_uart(world)
        self.RTC = _make_rtc(world)
        self.WDT = _make_wdt(world)

    def reset_cause(self):
        return self._w.reset_cause

    def wake_reason(self):
        return self._w.wake_reason

    def unique_id(self):
        return b"\x24\x0a\xc4\x00\x00\x01"

    def time_pulse_us(self, pin, pulse_level, timeout_us=1000000):
        w = self._w
        if w.jsn is None:
            return -2
        e = w.jsn.echoes.pop(0) if w.jsn.echoes else w.jsn.default_us
        w.clock_ms += 1
        if e is None or e > timeout_us:
            return -2
        return e

    def deepsleep(self, time_ms=0):
        raise SystemExit("deepsleep")


class FakeNVS:
    def __init__(self, world, namespace):
        self._w = world
        self._ns = world.nvs.setdefault(namespace, {})

    def get_i32(self, key):
        v = self._ns.get(key)
        if not isinstance(v, int):
            raise OSError(ENOENT)
        return v

    def set_i32(self, key, value):
        if not -0x80000000 <= value <= 0x7FFFFFFF:
            raise ValueError("i32 out of range")
        self._ns[key] = value
        self._w.nvs_writes += 1

    def get_blob(self, key, buffer):
        v = self._ns.get(key)
        if not isinstance(v, bytes):
            raise OSError(ENOENT)
        if len(v) > len(buffer):
            raise OSError(12)
        for i in range(len(v)):
            buffer[i] = v[i]
        return len(v)

    def set_blob(self, key, value):
        self._ns[key] = bytes(value)
        self._w.nvs_writes += 1

    def erase_key(self, key):
        if key not in self._ns:
            raise OSError(ENOENT)
        del self._ns[key]

    def commit(self):
        pass


class FakeESP32:
    WAKEUP_ALL_LOW = False
    WAKEUP_ANY_HIGH = True

    def __init__(self, world):
        self._w = world
        # As the port: the C3 has wake_on_gpio and no ext0/ext1, the ESP32 the reverse.
        if world.board.get("pin_wake") == "gpio":
            self.wake_on_gpio = self._wake_on_gpio
        else:
            self.wake_on_ext0 = self._wake_on_ext0
            self.wake_on_ext1 = self._wake_on_ext1

    def NVS(self, namespace):
        return FakeNVS(self._w, namespace)

    def _wake_on_ext0(self, pin, level):
        self._w.ext0 = None if pin is None else (pin.id, int(bool(level)))

    def _wake_on_ext1(self, pins, level):
        self._w.ext1 = None if not pins else ([p.id for p in pins], int(bool(level)))

    def _wake_on_gpio(self, pins, level):
        ok = self._w.board.get("rtc_wake_pins", [])
        for p in pins or []:
            if p.id not in ok:
                raise ValueError("invalid pin")
        self._w.gpio_wake = None if not pins else ([p.id for p in pins], int(bool(level)))

    def mcu_temperature(self):
        return 23


class FakeBLE:
    def __init__(self, world):
        self._w = world

    def active(self, value=None):
        if value is None:
            return self._w.ble_active
        self._w.ble_active = bool(value)
        return None

    def gap_advertise(self, interval_us, adv_data=None, *, resp_data=None, connectable=True):
        if interval_us is None:
            return
        if not self._w.ble_active:
            raise OSError(5)
        self._w.adverts.append((interval_us, bytes(adv_data), connectable))


class FakeBluetooth:
    def __init__(self, world):
        self._w = world

    def BLE(self):
        return FakeBLE(self._w)


class FakeTime:
    def __init__(self, world):
        self._w = world

    def ticks_ms(self):
        return self._w.clock_ms & 0x3FFFFFFF

    def ticks_us(self):
        return (self._w.clock_ms * 1000) & 0x3FFFFFFF

    def ticks_add(self, t, delta):
        return (t + delta) & 0x3FFFFFFF

    def ticks_diff(self, a, b):
        d = (a - b) & 0x3FFFFFFF
        return d - 0x40000000 if d & 0x20000000 else d

    def sleep_ms(self, ms):
        self._w.clock_ms += ms
        self._w._tick()

    def sleep_us(self, us):
        self._w.clock_ms += us // 1000

    def time(self):
        return (self._w.clock_ms - self._w.power_on_ms) // 1000


class _File:
    def __init__(self, text):
        self._t = text

    def read(self):
        return self._t

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


class FakeHAL:
    def __init__(self, world):
        self._w = world
        self.machine = FakeMachine(world)
        self.esp32 = FakeESP32(world)
        self.bluetooth = FakeBluetooth(world)
        self.time = FakeTime(world)

    def open(self, path, mode="r"):
        if path not in self._w.files:
            raise OSError(ENOENT)
        return _File(self._w.files[path])

    def energy(self, state):
        self._w.energy_log.append(state)
        self._w._tick()


# --- helpers shared by the tests and the VM script ---
KEY_HEX = "000102030405060708090a0b0c0d0e0f"

BOARD = {
    "name": "test-board",
    "chip": "ESP32",
    "ext0": True,
    "pins": {"i2c_scl": 22, "i2c_sda": 21, "mag_int": 4, "battery_adc": 35, "pulse": 25,
             "tamper": 26, "us_trig": 18, "us_echo": 19, "uart_tx": 17, "uart_rx": 16},
    "rtc_wake_pins": [4, 25, 26],
    "battery_divider": {"r_top_ohm": 1000000, "r_bottom_ohm": 1000000},
}


BOARD_C3 = {
    "name": "test-c3",
    "chip": "ESP32-C3",
    "ext0": False,
    "pin_wake": "gpio",
    "pins": {"i2c_scl": 6, "i2c_sda": 7, "mag_int": 2, "battery_adc": 0, "pulse": 3,
             "tamper": 4, "us_trig": 8, "us_echo": 10},
    "rtc_wake_pins": [0, 1, 2, 3, 4, 5],
    "battery_divider": {"r_top_ohm": 100000, "r_bottom_ohm": 100000},
}


def config_text(kind, node_id=0x01020304, transport="ble", extra=None):
    import json

    cfg = {"node_id": node_id, "key": KEY_HEX, "kind": kind, "board": "test-board",
           "transport": transport}
    if extra:
        for k in extra:
            cfg[k] = extra[k]
    return json.dumps(cfg)


def make_world(kind, transport="ble", extra=None, board=None, hook=None):
    b = board or BOARD
    w = World(config_text(kind, transport=transport, extra=extra), b, hook)
    if kind == "parking":
        w.i2c_devices[0x1C] = FakeLIS3MDL(int_pin=b["pins"]["mag_int"], world=w)
    elif kind == "bin":
        w.i2c_devices[0x29] = FakeVL53L1X()
    w.pins[b["pins"]["pulse"]] = 1
    w.adc_uv[b["pins"]["battery_adc"]] = 1800000
    return w
