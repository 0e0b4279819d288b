"""Drivers against register-level fakes of the parts."""

from __future__ import annotations

import binascii

import pytest

from simulator.firmware_loader import firmware_module
from tests import fw_fakes as ff
from urbansense.wire.protocol import NodeKeys, parse_header, verify_uplink

us_battery = firmware_module("us_battery")
us_jsnsr04t = firmware_module("us_jsnsr04t")
us_lis3mdl = firmware_module("us_lis3mdl")
us_node = firmware_module("us_node")
us_proto = firmware_module("us_proto")
us_vl53l1x = firmware_module("us_vl53l1x")


def _world_with(addr: int, dev: object) -> tuple[ff.World, ff.FakeHAL]:
    w = ff.World(ff.config_text("parking"), ff.BOARD)
    w.i2c_devices[addr] = dev
    return w, w.hal()


def _parking_mag(field_nt: tuple[int, int, int]) -> tuple[ff.World, ff.FakeLIS3MDL, us_lis3mdl.LIS3MDL]:
    """A parking board's LIS3MDL (INT on pin 4), initialised, in the given field."""
    w = ff.World(ff.config_text("parking"), ff.BOARD)
    dev = ff.FakeLIS3MDL(field_nt=field_nt, int_pin=4, world=w)
    w.i2c_devices[0x1C] = dev
    mag = us_lis3mdl.LIS3MDL(w.hal().machine.SoftI2C(scl=None, sda=None))
    mag.init()
    return w, dev, mag


def test_lis3mdl_init_reads_field_in_nanotesla() -> None:
    dev = ff.FakeLIS3MDL(field_nt=(20000, -5000, 42000))
    _, hal = _world_with(0x1C, dev)
    mag = us_lis3mdl.LIS3MDL(hal.machine.SoftI2C(scl=None, sda=None))
    mag.init()
    assert dev.regs[0x22] & 3 == 0  # continuous conversion
    assert dev.regs[0x20] & 0x60 == 0  # low-power operating mode
    assert mag.data_ready()
    x, y, z = mag.read_nt()
    assert abs(x - 20000) < 20 and abs(y + 5000) < 20 and abs(z - 42000) < 20


def test_lis3mdl_threshold_interrupt_latches_and_clears() -> None:
    w, dev, mag = _parking_mag((1000, 1000, 40000))
    mag.set_threshold_interrupt(7, 50000)
    assert dev.regs[0x30] == 0xEF
    assert w.pins.get(4, 0) == 0
    dev.set_field((1000, 1000, 61000))
    assert w.pins[4] == 1
    assert mag.int_source() & 0x21 == 0x21  # PTH_Z and INT
    assert w.pins[4] == 0 and mag.int_source() == 0


def test_lis3mdl_wrong_part_and_absent_part() -> None:
    dev = ff.FakeLIS3MDL()
    dev.regs[0x0F] = 0x33
    _, hal = _world_with(0x1C, dev)
    with pytest.raises(ValueError):
        us_lis3mdl.LIS3MDL(hal.machine.SoftI2C(scl=None, sda=None)).check()
    _, hal = _world_with(0x50, dev)
    with pytest.raises(OSError):
        us_lis3mdl.LIS3MDL(hal.machine.SoftI2C(scl=None, sda=None)).check()


def test_vl53l1x_init_and_ranging() -> None:
    dev = ff.FakeVL53L1X(distances_mm=[777, 812, None, 805])
    _, hal = _world_with(0x29, dev)
    tof = us_vl53l1x.VL53L1X(hal.machine.SoftI2C(scl=None, sda=None), hal.time.sleep_ms)
    assert tof.model_id() == 0xEACC
    tof.init()  # consumes the first range (VHV calibration)
    assert dev.config_written and dev.regs[0x0008] == 0x09
    assert tof.measure(3) == [812, None, 805]
    assert dev.regs[0x0087] == 0  # stopped after measuring


def test_vl53l1x_bad_model_id() -> None:
    dev = ff.FakeVL53L1X()
    dev.regs[0x010F] = 0x12
    _, hal = _world_with(0x29, dev)
    with pytest.raises(ValueError):
        us_vl53l1x.VL53L1X(hal.machine.SoftI2C(scl=None, sda=None), hal.time.sleep_ms).init()


def test_vl53l1x_times_out_when_never_ready() -> None:
    dev = ff.FakeVL53L1X(polls_per_range=10**9)
    _, hal = _world_with(0x29, dev)
    tof = us_vl53l1x.VL53L1X(hal.machine.SoftI2C(scl=None, sda=None), hal.time.sleep_ms, timeout_ms=20)
    with pytest.raises(OSError):
        tof.init()


def test_jsnsr04t_converts_echo_and_handles_timeout() -> None:
    w = ff.World(ff.config_text("bin"), ff.BOARD)
    w.jsn = ff.FakeJSN([5831, None, 2915])
    w.jsn_trig = 18
    hal = w.hal()
    s = us_jsnsr04t.JSNSR04T(hal.machine, hal.time.sleep_us, hal.time.sleep_ms, 18, 19)
    assert s.measure(3) == [1000, None, 499]
    assert w.jsn.triggers == 3
    assert us_jsnsr04t.echo_us_to_mm(0) == 0


def test_battery_divider_and_low_flag() -> None:
    w = ff.World(ff.config_text("bin"), ff.BOARD)
    w.adc_uv[35] = 1650000
    b = us_battery.Battery(w.hal().machine, 35, 1000000, 1000000, low_mv=3400)
    assert b.read_mv() == 3300
    assert b.is_low(3300) and not b.is_low(3600)


def test_lis3mdl_int_polarity_follows_iea_as_the_datasheet_says() -> None:
    """INT_CFG IEA: 0 = active low, 1 = active high (DocID024204; ST's C driver enum names
    are the other way round). The driver sets 1 and keeps it when disabling, so the idle line
    stays low: a wake armed on high never takes an idle line for an event."""
    w, dev, mag = _parking_mag((1000, 1000, 61000))
    dev.write(0x30, bytes((0xEB,)), 8)  # IEA = 0, LIR, IEN, an event pending: active low
    assert w.pins[4] == 0
    mag.disable_interrupt()
    assert dev.regs[0x30] == 0x0C and w.pins[4] == 0  # IEN off, active high kept: idle low
    mag.set_threshold_interrupt(1, 50000)
    assert dev.regs[0x30] & 0x04 and w.pins[4] == 0  # the event it latched was dropped
    dev.set_field((1000, 1000, 62000))  # the next sample still exceeds it: INT high
    assert w.pins[4] == 1


def test_lis3mdl_reconfiguring_drops_an_event_latched_under_the_old_threshold() -> None:
    w, dev, mag = _parking_mag((1000, 1000, 40000))
    mag.set_threshold_interrupt(7, 50000)
    dev.set_field((1000, 1000, 61000))  # a car: latched
    assert w.pins[4] == 1
    mag.set_threshold_interrupt(4, 30000)  # now watch x only: nothing crosses it
    assert w.pins[4] == 0


@pytest.mark.parametrize("temp_c", [-20, 0, 20, 35])
def test_jsnsr04t_compensates_the_speed_of_sound(temp_c: int) -> None:
    c_m_s = 331.3 + 0.606 * temp_c
    for mm in (300, 1000, 3500):
        echo_us = round(2 * mm / 1000 / c_m_s * 1e6)
        assert abs(us_jsnsr04t.echo_us_to_mm(echo_us, temp_c * 100) - mm) <= 1
    assert us_jsnsr04t.echo_us_to_mm(5831) == 1000  # no temperature: 343 m/s, as before
    # uncompensated at -20 degC a 3.5 m echo reads ~100 mm long
    echo = round(2 * 3500 / 1000 / (331.3 - 0.606 * 20) * 1e6)
    assert us_jsnsr04t.echo_us_to_mm(echo) - 3500 > 90


def test_jsnsr04t_bin_rejects_pings_in_its_blind_zone_by_default() -> None:
    w = ff.make_world("bin", extra={"sensor": "jsnsr04t"})
    w.jsn = ff.FakeJSN([875] * 5)  # 150 mm: inside the ~200 mm blind zone, a ghost echo
    w.jsn_trig = 18
    w.run_cycle(us_node)
    keys = NodeKeys(binascii.unhexlify(ff.KEY_HEX))
    ups = [verify_uplink(keys, f, parse_header(f), None) for f in w.frames()]
    assert ups[0].readings[us_proto.Q_FLAGS] & us_proto.F_SENSOR_FAULT
    assert not any(us_proto.Q_DISTANCE_MM in u.readings for u in ups)
