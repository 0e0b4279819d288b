"""Register maps of the I2C parts: power-on values, read-only registers, what a write stores.

The one definition behind both register-level models of each part: the simulator's
(simulator/devices.py, fed by the simulated world) and the tests' fakes (tests/fw_fakes.py,
fed by a test, also on the MicroPython VM, so this file keeps to the MicroPython subset).
The two differ only in where a sample comes from; tests/test_part_registers.py holds them to
the same registers.

LIS3MDL: ST DocID024204 (LIS3MDL datasheet), section 7 "Register mapping", the Default column
of the register address map, and section 8 (register descriptions): WHO_AM_I 0x3D;
CTRL_REG1 0x10 (10 Hz, low-power XY); CTRL_REG2 0x00 (+-4 gauss); CTRL_REG3 0x03 (power-down);
CTRL_REG4, CTRL_REG5 0x00; INT_CFG 0xE8 (XIEN YIEN ZIEN set, bit 3 reads 1, IEN clear);
INT_SRC, INT_THS_L, INT_THS_H 0x00. STATUS_REG, OUT_* and TEMP_OUT_* are outputs (read-only),
INT_SRC too; INT_THS_H bit 7 is 0 (a 15-bit threshold); SOFT_RST (CTRL_REG2 bit 2) clears
itself once the reset is done.

VL53L1X: ST publishes no register map in the datasheet (DS12385); the map is the one of ST's
VL53L1X API (vl53l1_register_map.h, BSD-3), whose "default" values are used:
GPIO_HV_MUX__CTRL 0x11 (interrupt active low until the driver's configuration block sets
0x01), RANGE_CONFIG__TIMEOUT_MACROP_A 0x0192, FIRMWARE__SYSTEM_STATUS 0x02 with bit 0
(firmware_bootup) set once the part has booted (the models boot at once: 0x03). The model id
is what the ultra-lite driver (STSW-IMG009, VL53L1X_GetSensorId) expects: 0xEACC at 0x010F.
"""

LIS3MDL_ADDR = 0x1C
LIS3MDL_NREGS = 0x40
LIS3MDL_WHO_AM_I = 0x3D
LIS3MDL_POR = (
    (0x0F, 0x3D),  # WHO_AM_I
    (0x20, 0x10),  # CTRL_REG1
    (0x21, 0x00),  # CTRL_REG2
    (0x22, 0x03),  # CTRL_REG3: power-down
    (0x23, 0x00),  # CTRL_REG4
    (0x24, 0x00),  # CTRL_REG5
    (0x30, 0xE8),  # INT_CFG
    (0x31, 0x00),  # INT_SRC
    (0x32, 0x00),  # INT_THS_L
    (0x33, 0x00),  # INT_THS_H
)


# LSB per gauss by CTRL_REG2 FS[1:0] (+-4, 8, 12, 16 gauss): DocID024204 Table 3, GN.
LIS3MDL_LSB_PER_GAUSS = (6842, 3421, 2281, 1711)


def lis3mdl_lsb(gauss, fs):
    """An axis' output register value for a field in gauss: rounded, and saturated at int16
    as the part saturates its output registers."""
    v = round(gauss * LIS3MDL_LSB_PER_GAUSS[fs])
    return -32768 if v < -32768 else (32767 if v > 32767 else v)


def lis3mdl_registers():
    """A part's registers after power-on (indexed by sub-address, auto-increment bit clear)."""
    regs = bytearray(LIS3MDL_NREGS)
    for reg, value in LIS3MDL_POR:
        regs[reg] = value
    return regs


def lis3mdl_read_only(reg):
    return reg == 0x0F or reg == 0x27 or 0x28 <= reg <= 0x2F or reg == 0x31


def lis3mdl_stored(reg, value):
    """The byte a write of ``value`` to the writable ``reg`` leaves there."""
    if reg == 0x21:
        return value & 0xFB  # SOFT_RST clears itself
    if reg == 0x33:
        return value & 0x7F
    return value


def lis3mdl_int_src(cfg, ths, x, y, z):
    """INT_SRC's threshold bits (PTH_X PTH_Y PTH_Z NTH_X NTH_Y NTH_Z) for a sample in LSB:
    an axis enabled in INT_CFG beyond +-ths. The caller adds the INT bit (0x01)."""
    src = 0
    if cfg & 0x80:
        if x > ths:
            src |= 0x80
        elif x < -ths:
            src |= 0x10
    if cfg & 0x40:
        if y > ths:
            src |= 0x40
        elif y < -ths:
            src |= 0x08
    if cfg & 0x20:
        if z > ths:
            src |= 0x20
        elif z < -ths:
            src |= 0x04
    return src


VL53L1X_ADDR = 0x29
VL53L1X_NREGS = 0x0200  # the ULD's whole map: configuration block, results, identification
VL53L1X_POR = (
    (0x0030, 0x11),  # GPIO_HV_MUX__CTRL
    (0x005E, 0x01),  # RANGE_CONFIG__TIMEOUT_MACROP_A_HI
    (0x005F, 0x92),  # RANGE_CONFIG__TIMEOUT_MACROP_A_LO
    (0x00E5, 0x03),  # FIRMWARE__SYSTEM_STATUS: booted
    (0x010F, 0xEA),  # IDENTIFICATION__MODEL_ID
    (0x0110, 0xCC),  # IDENTIFICATION__MODULE_TYPE
)


def vl53l1x_registers():
    regs = bytearray(VL53L1X_NREGS)
    for reg, value in VL53L1X_POR:
        regs[reg] = value
    return regs
