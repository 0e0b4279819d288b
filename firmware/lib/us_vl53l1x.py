# ST VL53L1X time-of-flight ranging sensor, register level after ST's ultra-lite driver
# (ULD, STSW-IMG009, BSD-3): 16-bit register addresses, default configuration block
# 0x2D..0x87, start/poll/read/clear. Distance mode long, timing budget from the defaults.
try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[misc]  # CPython stand-in for micropython.const
        return x

ADDR = const(0x29)
MODEL_ID_VALUE = const(0xEACC)

_SOFT_RESET = const(0x0000)
_VHV_CONFIG__TIMEOUT_MACROP_LOOP_BOUND = const(0x0008)
_VHV_CONFIG__INIT = const(0x000B)
_GPIO_HV_MUX__CTRL = const(0x0030)
_GPIO__TIO_HV_STATUS = const(0x0031)
_SYSTEM__INTERRUPT_CLEAR = const(0x0086)
_SYSTEM__MODE_START = const(0x0087)
_RESULT__RANGE_STATUS = const(0x0089)
_RESULT__RANGE_MM = const(0x0096)  # RESULT__FINAL_CROSSTALK_CORRECTED_RANGE_MM_SD0
_FIRMWARE__SYSTEM_STATUS = const(0x00E5)
_IDENTIFICATION__MODEL_ID = const(0x010F)
_CONFIG_START = const(0x2D)

# VL51L1X_DEFAULT_CONFIGURATION from the ULD (registers 0x2D..0x87, 91 bytes).
DEFAULT_CONFIGURATION = bytes((
    0x00, 0x00, 0x00, 0x01, 0x02, 0x00, 0x02, 0x08, 0x00, 0x08, 0x10, 0x01, 0x01, 0x00, 0x00, 0x00,
    0x00, 0xFF, 0x00, 0x0F, 0x00, 0x00, 0x00, 0x00, 0x00, 0x20, 0x0B, 0x00, 0x00, 0x02, 0x0A, 0x21,
    0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0xC8, 0x00, 0x00, 0x38, 0xFF, 0x01, 0x00, 0x08, 0x00,
    0x00, 0x01, 0xCC, 0x0F, 0x01, 0xF1, 0x0D, 0x01, 0x68, 0x00, 0x80, 0x08, 0xB8, 0x00, 0x00, 0x00,
    0x00, 0x0F, 0x89, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x0F, 0x0D, 0x0E, 0x0E, 0x00,
    0x00, 0x02, 0xC7, 0xFF, 0x9B, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00,
))
# ULD status_rtn: raw RESULT__RANGE_STATUS & 0x1F -> 0 valid, anything else a range error.
_RANGE_OK_RAW = const(9)
# The default configuration above sets RANGE_CONFIG__TIMEOUT_MACROP_A (0x5E) = 0x01CC: a 100 ms
# timing budget in long distance mode (ULD VL53L1X_GetTimingBudgetInMs). A ranging cannot be
# ready before it, so the driver sleeps it first (the CPU idles) and then polls coarsely.
TIMING_BUDGET_MS = const(100)
_POLL_MS = const(5)


class VL53L1X:
    def __init__(self, i2c, sleep_ms, addr=ADDR, timeout_ms=500):
        self._i2c = i2c
        self._sleep_ms = sleep_ms
        self._addr = addr
        self._timeout_ms = timeout_ms
        self._active_high = None
        self._b1 = bytearray(1)  # one- and two-register transfers: no allocation per access
        self._b2 = bytearray(2)

    def _w8(self, reg, value):
        b = self._b1
        b[0] = value
        self._i2c.writeto_mem(self._addr, reg, b, addrsize=16)

    def _r8(self, reg):
        b = self._b1
        self._i2c.readfrom_mem_into(self._addr, reg, b, addrsize=16)
        return b[0]

    def _r16(self, reg):
        b = self._b2
        self._i2c.readfrom_mem_into(self._addr, reg, b, addrsize=16)
        return (b[0] << 8) | b[1]

    def model_id(self):
        return self._r16(_IDENTIFICATION__MODEL_ID)

    def _wait(self, ready, first_ms=0):
        """Sleep first_ms (a ranging's known duration), then poll ready() every _POLL_MS."""
        waited_ms = 0
        if first_ms:
            self._sleep_ms(first_ms)
            waited_ms = first_ms
        while not ready():
            if waited_ms >= self._timeout_ms:
                raise OSError(116)  # ETIMEDOUT, as the port reports bus timeouts
            self._sleep_ms(_POLL_MS)
            waited_ms += _POLL_MS

    def init(self):
        """Boot check, model id, ULD SensorInit (one dummy ranging for VHV calibration)."""
        self._wait(lambda: self._r8(_FIRMWARE__SYSTEM_STATUS) & 1)
        if self.model_id() != MODEL_ID_VALUE:
            raise ValueError("vl53l1x: bad model id")
        self._i2c.writeto_mem(self._addr, _CONFIG_START, DEFAULT_CONFIGURATION, addrsize=16)
        # GPIO_HV_MUX__CTRL is in the block just written: its polarity bit needs no read-back.
        self._active_high = 0 if DEFAULT_CONFIGURATION[_GPIO_HV_MUX__CTRL - _CONFIG_START] & 0x10 else 1
        self.start()
        self._wait(self.data_ready, TIMING_BUDGET_MS)
        self.clear_interrupt()
        self.stop()
        self._w8(_VHV_CONFIG__TIMEOUT_MACROP_LOOP_BOUND, 0x09)  # two bounds VHV
        self._w8(_VHV_CONFIG__INIT, 0)  # start VHV from the previous temperature

    def start(self):
        self._w8(_SYSTEM__MODE_START, 0x40)

    def stop(self):
        self._w8(_SYSTEM__MODE_START, 0x00)

    def clear_interrupt(self):
        self._w8(_SYSTEM__INTERRUPT_CLEAR, 0x01)

    def data_ready(self):
        # GPIO_HV_MUX__CTRL bit 4 = 1 means active-low interrupt (ULD GetInterruptPolarity);
        # nothing changes it after init() (which knows it), so it is read at most once.
        if self._active_high is None:
            self._active_high = 0 if self._r8(_GPIO_HV_MUX__CTRL) & 0x10 else 1
        return (self._r8(_GPIO__TIO_HV_STATUS) & 1) == self._active_high

    def read_mm(self):
        """One ranging with the sensor started (or its interrupt just cleared, which starts
        the next): distance in mm, or None on a range error."""
        self._wait(self.data_ready, TIMING_BUDGET_MS)
        status = self._r8(_RESULT__RANGE_STATUS) & 0x1F
        mm = self._r16(_RESULT__RANGE_MM)
        self.clear_interrupt()
        return mm if status == _RANGE_OK_RAW else None

    def measure(self, n):
        """n rangings; None for each failed one."""
        out = []
        self.start()
        try:
            for _ in range(n):
                out.append(self.read_mm())
        finally:
            self.stop()
        return out
