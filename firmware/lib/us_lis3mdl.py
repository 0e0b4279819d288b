# ST LIS3MDL 3-axis magnetometer over I2C (datasheet DocID024204, section 7 "Register mapping").
# The parking node keeps it in low-power continuous mode with the threshold interrupt on
# INT, so the ESP32 sleeps until a car changes the field (ext0 wake) instead of polling.
try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[misc]  # CPython stand-in for micropython.const
        return x

import struct

ADDR_SA1_LOW = const(0x1C)
ADDR_SA1_HIGH = const(0x1E)
WHO_AM_I_VALUE = const(0x3D)

_WHO_AM_I = const(0x0F)
_CTRL_REG1 = const(0x20)  # TEMP_EN OM1 OM0 DO2 DO1 DO0 FAST_ODR ST
_CTRL_REG2 = const(0x21)  # 0 FS1 FS0 0 REBOOT SOFT_RST 0 0
_CTRL_REG3 = const(0x22)  # 0 0 LP 0 0 SIM MD1 MD0
_CTRL_REG4 = const(0x23)  # 0 0 0 0 OMZ1 OMZ0 BLE 0
_CTRL_REG5 = const(0x24)  # FAST_READ BDU 0 ...
_STATUS = const(0x27)  # ZYXOR ZOR YOR XOR ZYXDA ZDA YDA XDA
_OUT_X_L = const(0x28)
_TEMP_OUT_L = const(0x2E)
_INT_CFG = const(0x30)  # XIEN YIEN ZIEN 0 1 IEA LIR IEN
# IEA (bit 2) sets the INT polarity. The datasheet (DocID024204, INT_CFG register description)
# reads "Interrupt active configuration on INT ... (0: low; 1: high)", default 0 (the reset
# value 0xE8). ST's C driver (lis3mdl_reg.h, lis3mdl_iea_t) names the values the other way
# round, LIS3MDL_ACTIVE_HIGH = 0 / LIS3MDL_ACTIVE_LOW = 1; the datasheet wins: IEA = 1 is
# active high, as in Adafruit_LIS3MDL (configInterrupt: polarity true = active high).
_INT_CFG_FIXED = const(0x08)  # bit 3 must be written 1
_INT_CFG_IEA_HIGH = const(0x04)
_INT_CFG_LIR = const(0x02)
_INT_CFG_IEN = const(0x01)
_INT_SRC = const(0x31)  # PTH_X PTH_Y PTH_Z NTH_X NTH_Y NTH_Z MROI INT
_INT_THS_L = const(0x32)
_AUTO_INC = const(0x80)  # I2C: MSB of the sub-address enables auto-increment (section 5.1.1)

# CTRL_REG1 DO[2:0] output data rates (Table 21), low-power mode OM = 00.
ODR_0_625_HZ = const(0)
ODR_1_25_HZ = const(1)
ODR_10_HZ = const(4)
ODR_80_HZ = const(7)
# +-4 gauss full scale: 6842 LSB/gauss (Table 3); 1 gauss = 100 uT = 100000 nT.
_LSB_PER_GAUSS = const(6842)
_NT_PER_GAUSS = const(100000)
_STATUS_ZYXDA = const(0x08)
INT_OFF = const(0x0C)  # INT_CFG with IEN = 0: _INT_CFG_FIXED | _INT_CFG_IEA_HIGH


def lsb_to_nt(lsb):
    return lsb * _NT_PER_GAUSS // _LSB_PER_GAUSS


def nt_to_lsb(nt):
    return nt * _LSB_PER_GAUSS // _NT_PER_GAUSS


def _s16(lo, hi):
    v = lo | (hi << 8)
    return v - 0x10000 if v & 0x8000 else v


def interrupt_setting(axes_mask, threshold_nt):
    """-> (INT_CFG, INT_THS) for a latched, active-high INT when |axis| > threshold on any axis
    in axes_mask (x=4 y=2 z=1).

    The comparison is on the absolute value of each axis (the part has no offset
    registers), so the caller picks the threshold from the baseline.
    """
    ths = nt_to_lsb(threshold_nt)
    if ths < 0:
        ths = 0
    if ths > 0x7FFF:
        ths = 0x7FFF
    return (((axes_mask & 7) << 5) | _INT_CFG_FIXED | _INT_CFG_IEA_HIGH | _INT_CFG_LIR | _INT_CFG_IEN), ths


class LIS3MDL:
    def __init__(self, i2c, addr=ADDR_SA1_LOW):
        self._i2c = i2c
        self._addr = addr
        self._b1 = bytearray(1)  # one-register transfers: no allocation per access
        self._b2 = bytearray(2)
        self._b7 = bytearray(7)

    def _w(self, reg, value):
        b = self._b1
        b[0] = value
        self._i2c.writeto_mem(self._addr, reg, b)

    def _r(self, reg):
        b = self._b1
        self._i2c.readfrom_mem_into(self._addr, reg, b)
        return b[0]

    def check(self):
        """OSError if absent, ValueError if something else answers at the address."""
        if self._r(_WHO_AM_I) != WHO_AM_I_VALUE:
            raise ValueError("lis3mdl: bad WHO_AM_I")

    def init(self, odr=ODR_1_25_HZ):
        """Low-power continuous conversion, +-4 gauss, block data update, temperature on."""
        self.check()
        self._w(_CTRL_REG2, 0x00)  # FS = +-4 gauss
        self.set_odr(odr)
        self._w(_CTRL_REG4, 0x00)  # Z axis low-power, little endian
        self._w(_CTRL_REG5, 0x40)  # BDU: high and low bytes from the same sample
        self._w(_CTRL_REG3, 0x00)  # MD = 00: continuous conversion

    def set_odr(self, odr):
        # TEMP_EN | OM = 00 (low power) | DO
        self._w(_CTRL_REG1, 0x80 | ((odr & 7) << 2))

    def power_down(self):
        self._w(_CTRL_REG3, 0x03)

    def data_ready(self):
        return bool(self._r(_STATUS) & _STATUS_ZYXDA)

    def read_raw(self):
        """(x, y, z) in LSB; reading OUT_Z_H releases the data-ready flag."""
        b = self._b7
        self._i2c.readfrom_mem_into(self._addr, _STATUS | _AUTO_INC, b)
        return struct.unpack_from("<hhh", b, 1)

    def read_raw_if_ready(self):
        """(x, y, z) in LSB of a new sample, or None when STATUS has none (ZYXDA = 0).

        One auto-increment burst from STATUS_REG (0x27) through OUT_Z_H (0x2D): SUB(7) = 1
        (section 5.1.1) and the registers are contiguous. The part wraps its address from
        OUT_Z_H back to OUT_X_L (PX4-Autopilot#12514), which a burst ending at 0x2D never
        reaches. BDU keeps each axis' bytes from one sample; a stale block (ZYXDA = 0) is
        dropped, and the caller polls again.
        """
        b = self._b7
        self._i2c.readfrom_mem_into(self._addr, _STATUS | _AUTO_INC, b)
        if not b[0] & _STATUS_ZYXDA:
            return None
        return struct.unpack_from("<hhh", b, 1)  # little endian (CTRL_REG4 BLE = 0)

    def read_nt(self):
        x, y, z = self.read_raw()
        return [lsb_to_nt(x), lsb_to_nt(y), lsb_to_nt(z)]

    def read_temperature_cc(self):
        # 8 LSB/degC (Table 4); 0 LSB taken as 25 degC, as ST's drivers do.
        b = self._b2
        self._i2c.readfrom_mem_into(self._addr, _TEMP_OUT_L | _AUTO_INC, b)
        return 2500 + _s16(b[0], b[1]) * 100 // 8

    def set_threshold_interrupt(self, axes_mask, threshold_nt):
        """Latched, active-high INT when |axis| > threshold on any axis in axes_mask (x=4 y=2 z=1)."""
        cfg, ths = interrupt_setting(axes_mask, threshold_nt)
        self.program_interrupt(cfg, ths)

    def program_interrupt(self, cfg, ths, held=None):
        """Write INT_THS (ths None: leave it) and INT_CFG, then read INT_SRC. -> [cfg, ths]
        the part now holds (ths -1: unknown), for `held` at the next call.

        held: what the last call returned, when the part has been powered since and nothing
        else wrote these registers; a register that already holds its value is not written.
        The INT_SRC read always comes: it drops an event latched under the old configuration
        (it would hold INT active now; one the new configuration still sees comes back at the
        next sample) and the one that woke us.
        """
        if ths is not None and (held is None or held[1] != ths):
            b = self._b2
            b[0] = ths & 0xFF
            b[1] = ths >> 8
            self._i2c.writeto_mem(self._addr, _INT_THS_L | _AUTO_INC, b)
        if held is None or held[0] != cfg:
            self._w(_INT_CFG, cfg)
        self.int_source()
        if ths is None:
            ths = held[1] if held is not None else -1
        return [cfg, ths]

    def disable_interrupt(self):
        # IEN = 0, polarity kept active high: the idle line stays low, not at the inactive
        # level of an active-low INT (high), which a wake armed on high would take for an event.
        self._w(_INT_CFG, INT_OFF)

    def int_source(self):
        """INT_SRC; reading it clears a latched interrupt."""
        return self._r(_INT_SRC)
