"""Wake pins: water tamper, the ESP32-C3's single-level GPIO wake, the stuck-pin guard."""

from __future__ import annotations

import binascii

import pytest

from simulator.firmware_loader import firmware_module
from tests import fw_fakes as ff
from urbansense.wire.protocol import NodeKeys, Uplink, parse_header, verify_uplink

us_node = firmware_module("us_node")
us_proto = firmware_module("us_proto")
us_wake = firmware_module("us_wake")


KEYS = NodeKeys(binascii.unhexlify(ff.KEY_HEX))
TAMPER_ON = {"calibration": {"tamper": True}}
PULL_UP = 2
PULL_DOWN = 1


def ups(w: ff.World) -> list[Uplink]:
    return [verify_uplink(KEYS, f, parse_header(f), None) for f in w.frames()]


def alarms(w: ff.World) -> list[int]:
    return [u.readings[us_proto.Q_ALARMS] for u in ups(w) if u.ftype == us_proto.T_ALARM]


def pulses(w: ff.World) -> int:
    st = firmware_module("us_store").load_rtc(w.hal().machine.RTC())
    return int(st["k"]["pc"])


def test_tamper_is_opt_in() -> None:
    """A board with a tamper pin but no calibration.tamper: the pin is neither read nor armed."""
    w = ff.make_world("water")
    w.pins[26] = 1  # an unwired input floating high must not raise an alarm
    w.run_cycle(us_node)
    assert w.ext1 is None
    assert all(not u.readings.get(us_proto.Q_ALARMS, 0) & us_proto.A_TAMPER for u in ups(w))


def test_tamper_armed_on_the_opposite_level_raises_and_clears_without_fake_pulses() -> None:
    w = ff.make_world("water", extra=TAMPER_ON)
    w.run_cycle(us_node)
    assert w.pulls[26] == PULL_DOWN  # default wiring: switch to 3V3, closes when the lid opens
    assert w.pins.get(26, 0) == 0 and w.ext1 == ([26], 1)  # closed: wake when it opens
    assert w.ext0 == (25, 0)
    w.pins[26] = 1  # opened
    w.sleep(5000, ff.EXT1_WAKE)
    w.run_cycle(us_node)
    assert [a & us_proto.A_TAMPER for a in alarms(w)] == [us_proto.A_TAMPER]
    assert w.ext1 == ([26], 0)  # opened: wake when it closes, not at once
    w.pins[26] = 0  # closed again
    w.sleep(5000, ff.EXT1_WAKE)
    w.run_cycle(us_node)
    assert [a & us_proto.A_TAMPER for a in alarms(w)] == [0]  # the clearing is reported too
    assert w.ext1 == ([26], 1)
    assert pulses(w) == 0  # two ext1 wakes, no pulse: the pulse input never moved


def test_tamper_pull_follows_the_board() -> None:
    board = dict(ff.BOARD, tamper_pull="up")
    w = ff.make_world("water", extra=TAMPER_ON, board=board)
    w.run_cycle(us_node)
    assert w.pulls[26] == PULL_UP
    assert w.ext1 == ([26], 0)  # pulled up and unconnected reads opened: wake on closing
    assert alarms(w) and alarms(w)[0] & us_proto.A_TAMPER


def test_ext0_short_pulse_still_counted() -> None:
    """The pulse input went active and back during the boot: ext0 itself proves the pulse."""
    w = ff.make_world("water", extra=TAMPER_ON)
    w.run_cycle(us_node)
    w.sleep(5000, ff.EXT0_WAKE)  # pin 25 still reads 1 (idle)
    w.run_cycle(us_node)
    assert pulses(w) == 1


C3_WATER = dict(TAMPER_ON)


def test_c3_pulse_pin_has_priority_and_tamper_is_read_on_timer_wakes() -> None:
    """One wake level for all pins on the C3: the pulse input's, the tamper pin joins only at
    the same level (it was the other way round: tamper first, the pulse input dropped)."""
    w = ff.make_world("water", extra=C3_WATER, board=ff.BOARD_C3)
    w.pins[3] = 1  # reed open (pulled up); tamper closed
    w.run_cycle(us_node)
    assert w.gpio_wake == ([3], 0)  # reed closing; tamper (wants 1) waits for a timer wake
    w.pins[3] = 0  # reed closes
    w.sleep(4000, us_wake.GPIO_WAKE)
    w.run_cycle(us_node)
    assert pulses(w) == 1
    assert w.gpio_wake == ([3, 4], 1)  # both want high now: reed release, lid opening
    w.pins[4] = 1  # lid opened while the reed is closed: a GPIO wake that is not a pulse
    w.sleep(4000, us_wake.GPIO_WAKE)
    w.run_cycle(us_node)
    assert pulses(w) == 1
    assert [a & us_proto.A_TAMPER for a in alarms(w)] == [us_proto.A_TAMPER]
    assert w.gpio_wake == ([3], 1)  # the tamper pin wants low now: timer wakes read it
    w.pins[4] = 0  # lid closed: seen at the hourly report
    w.sleep(3600 * 1000, ff.TIMER_WAKE)
    w.run_cycle(us_node)
    assert [a & us_proto.A_TAMPER for a in alarms(w)] == [0]
    w.pins[3] = 1  # reed released
    w.sleep(4000, us_wake.GPIO_WAKE)
    w.run_cycle(us_node)
    assert pulses(w) == 1 and w.gpio_wake == ([3], 0)  # lid closed wants high: not armed
    w.sleep(4000, us_wake.GPIO_WAKE)  # reed closed and opened again within the boot
    w.run_cycle(us_node)
    assert pulses(w) == 2


def test_c3_parking_arms_the_magnetometer_interrupt() -> None:
    w = ff.make_world("parking", board=ff.BOARD_C3)
    w.i2c_devices[0x1C].int_pin = 2
    w.run_cycle(us_node)
    assert w.gpio_wake == ([2], 1)


def _stuck_parking() -> ff.World:
    w = ff.make_world("parking")
    w.run_cycle(us_node)
    assert w.ext0 == (4, 1)
    w.i2c_devices[0x1C].int_pin = None  # the line is shorted high: the part no longer drives it
    w.pins[4] = 1
    return w


def test_wake_pin_at_its_wake_level_is_not_armed() -> None:
    """Armed, it would wake the chip at once forever: poll >= 60 s instead, report a fault."""
    w = _stuck_parking()
    w.sleep(3600 * 1000)
    ms = w.run_cycle(us_node)
    assert w.ext0 is None
    assert 60000 <= ms <= 60000  # the poll is the earliest deadline here
    status = [u for u in ups(w) if u.ftype == us_proto.T_STATUS]
    assert status and status[0].readings[us_proto.Q_FLAGS] & us_proto.F_SENSOR_FAULT
    w.sleep(ms)
    w.run_cycle(us_node)  # still stuck: still not armed, but no status frame every minute
    assert w.ext0 is None and not [u for u in ups(w) if u.ftype == us_proto.T_STATUS]
    w.pins[4] = 0  # released
    w.sleep(60000)
    w.run_cycle(us_node)
    assert w.ext0 == (4, 1)


def test_edge_pin_found_at_its_wake_level_is_armed() -> None:
    """The caller read the pin at the other level: it moved since, and waking at once is right."""
    w = ff.make_world("water")
    node = us_node.Node(w.hal(), us_node.parse_config(w.files["config.json"]), ff.BOARD, {}, None, False)
    w.pins[25] = 0
    node.wake_on_pin(25, 0, edge=True)
    w.pins[18] = 1
    node.wake_on_pins([26], 1)
    w.pins[26] = 1
    node.plan_wakes()
    assert node._plan == (25, 0, None, [], 1)
    assert node.flags & us_proto.F_SENSOR_FAULT  # pin 26, no edge: a stuck input


@pytest.mark.parametrize("pin", [18, 33])
def test_pin_that_cannot_wake_the_chip_is_not_armed(pin: int) -> None:
    w = ff.make_world("water")
    node = us_node.Node(w.hal(), us_node.parse_config(w.files["config.json"]), ff.BOARD, {}, None, False)
    node.wake_on_pin(pin, 1)
    node.plan_wakes()
    assert node._plan[0] == -1 and node.flags & us_proto.F_SENSOR_FAULT
    assert node.sleep_ms() == us_node.STUCK_PIN_POLL_S * 1000
