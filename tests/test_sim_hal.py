"""The simulated hardware through the HAL, driven by the firmware's own drivers."""

from __future__ import annotations

import errno
import types
from typing import Any

import pytest

from simulator.firmware_loader import firmware_module, load_firmware
from simulator.sim import Simulation

us_lis3mdl = firmware_module("us_lis3mdl")
us_vl53l1x = firmware_module("us_vl53l1x")


def _idle() -> types.ModuleType:
    fw = types.ModuleType("idle")
    fw.run_cycle = lambda hal: 60_000  # type: ignore[attr-defined]
    return fw


def _node(kind: str, **grp: Any) -> Any:
    sc = {"sim": {"name": "hal", "seed": 1}, "gateways": [{"id": "g"}], "nodes": [{"kind": kind, "count": 1, **grp}]}
    sim = Simulation(sc, firmware=_idle())
    node = sim.nodes[0]
    node.t = node.boot_t = 3600.0
    if node.power_pin is not None:  # the sensors' load switch on, as the firmware does
        node.hal.machine.Pin(node.power_pin, node.hal.machine.Pin.OUT, value=1)
    return sim, node


def test_lis3mdl_registers_and_threshold_interrupt() -> None:
    _sim, node = _node("parking")
    m = node.hal.machine
    i2c = m.SoftI2C(scl=m.Pin(22), sda=m.Pin(21), freq=400_000)
    assert i2c.scan() == [0x1C]
    mag = us_lis3mdl.LIS3MDL(i2c)
    mag.init(us_lis3mdl.ODR_80_HZ)
    x, y, z = mag.read_nt()
    assert 30_000 < (x * x + y * y + z * z) ** 0.5 < 60_000  # the earth's field, ~45 uT
    assert 0 < mag.read_temperature_cc() < 3000
    # threshold below the field on every axis: INT goes high (latched), INT_SRC clears it
    mag.set_threshold_interrupt(7, 1000)
    assert node.wires[4].level(node.t) == 1
    src = mag.int_source()
    assert src & 1
    mag.set_threshold_interrupt(7, 200_000)  # 2 gauss: nothing reaches it
    assert node.wires[4].level(node.t) == 0
    with pytest.raises(OSError) as e:
        i2c.readfrom_mem(0x50, 0, 1)
    assert e.value.errno == errno.ENODEV


def test_lis3mdl_wakes_the_node_when_a_car_arrives() -> None:
    _sim, node = _node("parking")
    space = node.world
    m = node.hal.machine
    mag = us_lis3mdl.LIS3MDL(m.SoftI2C(scl=m.Pin(22), sda=m.Pin(21)))
    mag.init(us_lis3mdl.ODR_1_25_HZ)
    base = mag.read_nt()
    mag.set_threshold_interrupt(7, max(abs(v) for v in base) + 12_000)
    space.ensure(3 * 86400.0)
    # a car that strengthens the (downward) field: |z| rises past the threshold
    arrival = next(t for t, o, v in zip(space.changes, space.occ, space.vehicle, strict=True)
                   if o and t > node.t and v[2] < -0.15)
    t_wake = node.wires[4].time_at_level(node.t, 1, 3 * 86400.0)
    assert t_wake is not None and node.t <= t_wake <= arrival  # that car, or an earlier one / a passer-by
    assert node.wires[4].level(t_wake) == 1


def test_vl53l1x_ranges_the_bin() -> None:
    _sim, node = _node("bin", sensor="vl53l1x")
    m = node.hal.machine
    tof = us_vl53l1x.VL53L1X(m.SoftI2C(scl=m.Pin(22), sda=m.Pin(21)), node.hal.time.sleep_ms)
    assert tof.model_id() == 0xEACC
    tof.init()
    t0 = node.t
    mm = [v for v in tof.measure(5) if v is not None]
    assert node.t - t0 >= 5 * 0.100  # the ULD default configuration: 100 ms timing budget
    truth = node.world.distance_mm(node.t)
    assert mm and all(abs(v - truth) < 40 for v in mm)


def test_nvs_rtc_and_files_follow_the_port() -> None:
    _sim, node = _node("water")
    hal = node.hal
    nvs = hal.esp32.NVS("urbansense")
    with pytest.raises(OSError):
        nvs.get_i32("x")
    nvs.set_i32("x", 7)
    assert nvs.get_i32("x") == 7
    nvs.commit()
    nvs.set_i32("y", 1)  # not committed: lost on power loss
    rtc = hal.machine.RTC()
    rtc.memory(b"state")
    with pytest.raises(ValueError):
        rtc.memory(bytes(2049))
    node.sleep_start = node.t
    node.fault(node.t, "brownout", 1.0)
    assert rtc.memory() == b""
    assert nvs.get_i32("x") == 7
    with pytest.raises(OSError):
        nvs.get_i32("y")
    buf = bytearray(4)
    nvs.set_blob("b", b"abcdef")
    with pytest.raises(OSError):
        nvs.get_blob("b", buf)
    with hal.open("config.json") as f:
        assert '"kind": "water"' in f.read()
    with pytest.raises(OSError):
        hal.open("nope.json")
    t = hal.time
    assert t.ticks_diff(t.ticks_add(t.ticks_ms(), 5), t.ticks_ms()) == 5
    assert t.ticks_diff(1, (1 << 30) - 1) == 2  # wraps like MicroPython
    assert hal.machine.time_pulse_us(hal.machine.Pin(19), 1, 1000) == -1  # nothing on that pin


def test_unpowered_sensor_nacks_draws_nothing_and_hold_survives_deep_sleep() -> None:
    _sim, node = _node("bin")
    m = node.hal.machine
    i2c = m.SoftI2C(scl=m.Pin(22), sda=m.Pin(21), freq=400_000)
    tof = us_vl53l1x.VL53L1X(i2c, node.hal.time.sleep_ms)
    assert tof.model_id() == us_vl53l1x.MODEL_ID_VALUE
    powered_ua = node.sleep_current_ua()
    assert powered_ua > node.profile.deep_sleep_ua
    m.Pin(node.power_pin, m.Pin.OUT, value=0)
    with pytest.raises(OSError) as exc:
        tof.model_id()
    assert exc.value.errno == errno.ENODEV
    assert i2c.scan() == []
    assert node.sleep_current_ua() == node.profile.deep_sleep_ua
    # Not held: the pad resets in deep sleep and the switch opens. Held: it stays on.
    m.Pin(node.power_pin, m.Pin.OUT, value=1)
    node.boot(node.t + 60.0, 4, 4)
    assert not node.i2c_powered
    m.Pin(node.power_pin, m.Pin.OUT, value=1, hold=True)
    node.boot(node.t + 60.0, 4, 4)
    assert node.i2c_powered and tof.model_id() == us_vl53l1x.MODEL_ID_VALUE


def test_unpowered_magnetometer_int_line_stays_low() -> None:
    _sim, node = _node("parking")
    m = node.hal.machine
    mag = us_lis3mdl.LIS3MDL(m.SoftI2C(scl=m.Pin(22), sda=m.Pin(21)))
    mag.init(us_lis3mdl.ODR_1_25_HZ)
    mag.set_threshold_interrupt(7, 1000)  # 1 uT: the earth field crosses it at once
    dev = node.i2c_devices[0x1C]
    assert dev.int_level(node.t) == 1
    m.Pin(node.power_pin, m.Pin.OUT, value=0)
    assert dev.int_level(node.t) == 0
    assert dev.time_at_level(node.t, 1, node.t + 3600.0) is None


def test_esp32c3_board_wakes_on_gpio_like_the_port() -> None:
    """The C3 port has esp32.wake_on_gpio and no ext0/ext1 (modesp32.c compiles each only where
    the SoC has it): the firmware arms GPIO wake on a C3 board, and its nodes still wake on the
    magnetometer's interrupt and the meter's pulses (wake reason 7, ESP_SLEEP_WAKEUP_GPIO)."""
    sc = {"sim": {"name": "c3", "seed": 2, "board": "esp32c3-devkitm-1"}, "gateways": [{"id": "g"}],
          "nodes": [{"kind": "parking", "count": 3}, {"kind": "water", "count": 3}]}
    sim = Simulation(sc)
    esp32 = sim.nodes[0].hal.esp32
    assert hasattr(esp32, "wake_on_gpio") and not hasattr(esp32, "wake_on_ext0")
    assert not hasattr(esp32, "wake_on_ext1")
    with pytest.raises(ValueError, match="invalid pin"):  # GPIO6+ cannot wake a C3
        esp32.wake_on_gpio([sim.nodes[0].hal.machine.Pin(6)], esp32.WAKEUP_ANY_HIGH)
    summary = sim.run(86400.0)
    sim.close()
    assert all(n.wakes[7] > 0 for n in sim.nodes), [dict(n.wakes) for n in sim.nodes]
    assert summary["frames"]["parking"]["sent"] > 3 * 24  # heartbeats plus the state changes
    # A pin wake on the classic ESP32 is reason 2/3; none of those on the C3.
    assert all(n.wakes[2] == n.wakes[3] == 0 for n in sim.nodes)


def test_firmware_modules_get_the_port_s_json_and_binascii() -> None:
    import binascii
    import json

    us_store = firmware_module("us_store")
    load_firmware()
    pj, pb = us_store.json, us_store.binascii
    assert pj is not json and pb is not binascii
    state = {"kd": "water", "k": {"hb": [0, 1, 2]}, "n": None}
    assert pj.dumps(state, (",", ":")) == json.dumps(state, separators=(",", ":"))
    assert pj.dumps([1, 2]) == "[1, 2]"  # MicroPython's default separators
    with pytest.raises(TypeError):
        pj.dumps(state, indent=2)  # not in MicroPython's json
    assert pj.loads(b'{"a":[1]}') == {"a": [1]}
    blob = bytes(range(256)) * 3
    assert pb.crc32(blob) == binascii.crc32(blob)
    assert pb.unhexlify(pb.hexlify(blob)) == blob
