"""The two register-level models of each part, the simulator's (simulator/devices.py) and the
tests' fake (tests/fw_fakes.py), are one register map (simulator/part_registers.py): the same
power-on values, the datasheet's, the same write rules, and the same registers for the same
field. Only where a sample comes from differs."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.devices import LIS3MDL, VL53L1X
from tests import fw_fakes as ff

# DocID024204 (LIS3MDL), section 7, register address map, Default column.
LIS3MDL_DATASHEET_POR = {0x0F: 0x3D, 0x20: 0x10, 0x21: 0x00, 0x22: 0x03, 0x23: 0x00, 0x24: 0x00,
                         0x30: 0xE8, 0x31: 0x00, 0x32: 0x00, 0x33: 0x00}
AUTO_INC = 0x80  # SUB(7): the sub-address increments over a multi-byte read or write


class _Field:
    """A parking space whose field does not change (gauss, per axis)."""

    def __init__(self, gauss: tuple[float, float, float]) -> None:
        self.gauss = gauss

    def field_gauss(self, t: float, temp_c: float, noisy: bool) -> tuple[float, float, float]:
        return self.gauss

    def change_points(self, t0: float, t1: float) -> list[float]:
        return []


def _sim_node() -> Any:
    return SimpleNamespace(t=0.0, sim=SimpleNamespace(t_day0=0.0), i2c_powered=True,
                           temperature_c=lambda t: 20.0)


class _Models:
    """The same LIS3MDL twice, behind one read/write interface (I2C sub-addresses)."""

    def __init__(self, field_nt: tuple[int, int, int] = (20000, -5000, 42000)) -> None:
        self.fake = ff.FakeLIS3MDL(field_nt=field_nt)
        self.sim = LIS3MDL(_sim_node(), _Field(tuple(v / 100000 for v in field_nt)),  # type: ignore[arg-type]
                           random.Random(1))

    def read(self, reg: int, n: int = 1) -> tuple[bytes, bytes]:
        return self.fake.read(reg, n, 8), self.sim.read(reg, n)

    def write(self, reg: int, data: bytes) -> None:
        self.fake.write(reg, data, 8)
        self.sim.write(reg, data)


def test_both_lis3mdl_models_power_on_with_the_datasheets_values() -> None:
    m = _Models()
    for reg, value in LIS3MDL_DATASHEET_POR.items():
        assert m.read(reg) == (bytes([value]), bytes([value])), hex(reg)


def test_both_lis3mdl_models_store_a_write_alike() -> None:
    """Read-only registers ignore it; SOFT_RST clears itself; INT_THS_H has 15 bits."""
    m = _Models()
    for reg in (0x0F, 0x20, 0x21, 0x23, 0x24, 0x27, 0x30, 0x32, 0x33):
        m.write(reg, b"\xff")
    expect = {0x0F: 0x3D, 0x20: 0xFF, 0x21: 0xFB, 0x23: 0xFF, 0x24: 0xFF, 0x30: 0xFF, 0x32: 0xFF, 0x33: 0x7F}
    for reg, value in expect.items():
        assert m.read(reg) == (bytes([value]), bytes([value])), hex(reg)
    m.write(AUTO_INC | 0x32, b"\x34\x92")  # INT_THS_L, INT_THS_H in one write
    assert m.read(AUTO_INC | 0x32, 2) == (b"\x34\x12", b"\x34\x12")


@settings(max_examples=60, deadline=None)
@given(field_nt=st.tuples(*[st.integers(-2_000_000, 2_000_000)] * 3), fs=st.integers(0, 3),
       cfg=st.integers(0, 7).map(lambda axes: (axes << 5) | 0x08 | 0x01), ths=st.integers(0, 0x7FFF))
def test_both_lis3mdl_models_give_the_same_sample_and_interrupt_for_a_field(
        field_nt: tuple[int, int, int], fs: int, cfg: int, ths: int) -> None:
    """Output registers (rounded, saturated at int16 for each full scale) and INT_SRC."""
    m = _Models(field_nt)
    m.write(0x21, bytes([fs << 5]))
    m.write(0x32, bytes([ths & 0xFF]))
    m.write(0x33, bytes([ths >> 8]))
    m.write(0x30, bytes([cfg]))
    m.write(0x22, b"\x00")  # continuous conversion
    fake, sim = m.read(AUTO_INC | 0x28, 6)
    assert fake == sim
    fake_src, sim_src = m.read(0x31)
    assert fake_src == sim_src


def test_both_vl53l1x_models_power_on_alike() -> None:
    """Booted (FIRMWARE__SYSTEM_STATUS bit 0), model id 0xEACC, ST's register-map defaults."""
    fake = ff.FakeVL53L1X()
    sim = VL53L1X(_sim_node(), SimpleNamespace(), random.Random(1))  # type: ignore[arg-type]
    for reg, n, want in ((0x00E5, 1, b"\x03"), (0x010F, 2, b"\xea\xcc"), (0x0030, 1, b"\x11"),
                         (0x005E, 2, b"\x01\x92")):
        assert fake.read(reg, n, 16) == sim.read(reg, n) == want, hex(reg)
