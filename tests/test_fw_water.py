"""The water meter: its totalizer and alarms (us_water.Meter, pure), and its wake cycle
(us_water.run) through us_node: how its inputs are wired, which settings and downlinks it
obeys, and which wakes are pulses."""

from __future__ import annotations

import binascii

from simulator.firmware_loader import firmware_module
from tests import fw_fakes as ff
from tests.test_fw_serial import Gateway
from urbansense.wire.protocol import NodeKeys, Uplink, parse_header, verify_uplink

us_node = firmware_module("us_node")
us_proto = firmware_module("us_proto")
us_store = firmware_module("us_store")
us_water = firmware_module("us_water")
us_wake = firmware_module("us_wake")

KEYS = NodeKeys(binascii.unhexlify(ff.KEY_HEX))
IN, PULL_DOWN, PULL_UP = 1, 1, 2
TAMPER_ON = {"calibration": {"tamper": True}}


def ups(w: ff.World) -> list[Uplink]:
    return [verify_uplink(KEYS, f, parse_header(f), None) for f in w.frames()]


def kst(w: ff.World) -> dict:
    st = us_store.load_rtc(w.hal().machine.RTC())
    assert st is not None
    return st["k"]  # type: ignore[no-any-return]


def pulse(w: ff.World, pin: int = 25, active: int = 0, wake: int = ff.EXT0_WAKE, ms: int = 2000) -> list[Uplink]:
    """One pulse: the input goes active (a wake), then idle again (a wake); the frames sent."""
    out = []
    for level in (active, 1 - active):
        w.pins[pin] = level
        w.sleep(ms, wake)
        w.run_cycle(us_node)
        out += ups(w)
    return out


def alarm_bits(frames: list[Uplink]) -> list[int]:
    return [u.readings[us_proto.Q_ALARMS] for u in frames if u.ftype == us_proto.T_ALARM]


def test_the_pulse_input_is_an_input_pulled_against_its_active_level() -> None:
    """Active low (the default, a reed to GND): pulled up, armed on the falling level with the
    pull held through sleep. Active high: pulled down, and the high level counts."""
    w = ff.make_world("water")
    del w.pins[25]  # reed open: nothing drives the pad, its pull decides
    w.run_cycle(us_node)
    assert (w.modes[25], w.pulls[25], w.ext0) == (IN, PULL_UP, (25, 0))
    assert pulse(w) == [] and kst(w)["pc"] == 1
    assert w.pulls[25] == PULL_UP

    w = ff.make_world("water", extra={"calibration": {"pulse_active_level": 1}})
    del w.pins[25]
    w.run_cycle(us_node)
    assert (w.modes[25], w.pulls[25], w.ext0) == (IN, PULL_DOWN, (25, 1))
    pulse(w, active=1)
    pulse(w, active=1)
    assert kst(w)["pc"] == 2 and w.pulls[25] == PULL_DOWN and w.ext0 == (25, 1)


def test_a_litre_a_pulse_without_calibration() -> None:
    w = ff.make_world("water")
    w.nvs["urbansense"] = {"pulses": 1000}  # what flash held before a battery swap
    w.run_cycle(us_node)
    for _ in range(3):
        pulse(w)
    w.sleep(3600 * 1000)
    w.run_cycle(us_node)
    assert [u.readings[us_proto.Q_VOLUME_L] for u in ups(w) if u.ftype == us_proto.T_REPORT] == [1003]


def test_the_burst_threshold_is_the_configured_one() -> None:
    """A 1 L pulse a minute is 60 L/h: a burst at a configured 60 L/h, none at the default
    1500 L/h; three 10 L pulses in a minute (1800 L/h) are none at a configured 3000."""
    for burst_lph, ml, n, want in ((60, 1000, 1, [us_proto.A_BURST]), (None, 1000, 1, []),
                                   (3000, 10000, 3, [])):
        extra = {"calibration": {"ml_per_pulse": ml}}
        if burst_lph:
            extra["thresholds"] = {"burst_lph": burst_lph}
        w = ff.make_world("water", extra=extra)
        w.run_cycle(us_node)
        frames = []
        for _ in range(n):
            frames += pulse(w, ms=1000)
        assert alarm_bits(frames) == want, burst_lph


def test_a_burst_is_one_alarm_frame_not_one_a_pulse() -> None:
    """The alarm goes out when raised; the pulses after it (and the wakes in between) keep it
    without sending it again, tamper on (lid shut) or off."""
    for extra in ({}, TAMPER_ON):
        w = ff.make_world("water", extra={**extra, "thresholds": {"burst_lph": 60}})
        w.run_cycle(us_node)
        frames = []
        for _ in range(5):
            frames += pulse(w, ms=1000)
        assert alarm_bits(frames) == [us_proto.A_BURST], extra


def test_downlinks_set_the_burst_threshold_and_the_report_interval() -> None:
    """A serial water node configured for 3000 L/h and hourly reports, told 60 L/h and 900 s
    by its gateway: a 1 L pulse is a burst, and reports come every quarter hour."""
    w = ff.make_world("water", transport="serial", extra={"thresholds": {"burst_lph": 3000}})
    gw = Gateway()
    w.uart_peer = gw
    gw.commands = {us_proto.C_BURST_LPH: 60, us_proto.C_REPORT_INTERVAL_S: 900}
    w.run_cycle(us_node)
    assert kst(w)["rp"] == 3600  # the report of the cold boot was scheduled before the ack
    gw.commands = None
    w.sleep(3600 * 1000 - w.clock_ms)
    w.run_cycle(us_node)
    assert kst(w)["rp"] == 3600 + 900
    pulse(w, ms=1000)
    assert [u.readings[us_proto.Q_ALARMS] for u in gw.delivered if u.ftype == us_proto.T_ALARM] == [us_proto.A_BURST]


def test_reports_fall_on_multiples_of_the_configured_interval() -> None:
    """report_interval_s 900: a node first up at 100 s reports next at 900 s, then 1800 s."""
    w = ff.make_world("water", extra={"intervals": {"report_interval_s": 900}})
    w.clock_ms = 100_000
    w.power_on_ms = 0
    assert w.run_cycle(us_node) == 800_000
    assert kst(w)["rp"] == 900
    w.sleep(800_000)
    w.run_cycle(us_node)
    assert kst(w)["rp"] == 1800


def test_a_tamper_pin_without_a_pull_is_read_as_wired() -> None:
    """Board tamper_pull "none" (an external resistor): an input whose pull the firmware
    leaves alone (an internal pull-down would overpower a 1-10 MOhm pull-up), and an
    opened lid is an alarm."""
    board = dict(ff.BOARD, tamper_pull="none")
    w = ff.make_world("water", extra=TAMPER_ON, board=board)
    w.pins[26] = 1
    w.run_cycle(us_node)
    assert w.modes[26] == IN and 26 not in w.pulls
    assert alarm_bits(ups(w)) == [us_proto.A_TAMPER]
    w = ff.make_world("water", extra=TAMPER_ON)
    w.run_cycle(us_node)
    assert (w.modes[26], w.pulls[26]) == (IN, PULL_DOWN)


def test_an_opened_lid_keeps_the_other_alarms() -> None:
    w = ff.make_world("water", extra={**TAMPER_ON, "thresholds": {"burst_lph": 60}})
    w.run_cycle(us_node)
    frames = pulse(w, ms=1000)
    w.pins[26] = 1
    w.sleep(2000, ff.EXT1_WAKE)
    w.run_cycle(us_node)
    frames += ups(w)
    assert alarm_bits(frames) == [us_proto.A_BURST, us_proto.A_BURST | us_proto.A_TAMPER]


def test_an_ext0_wake_is_a_pulse_even_when_the_lid_moved_too() -> None:
    """The pulse input went active and back during the boot while the lid opened: ext0 is the
    pulse input alone, so the wake is a pulse (and the lid an alarm)."""
    w = ff.make_world("water", extra=TAMPER_ON)
    w.run_cycle(us_node)
    w.pins[26] = 1
    w.sleep(2000, ff.EXT0_WAKE)  # pin 25 reads idle again
    w.run_cycle(us_node)
    assert kst(w)["pc"] == 1 and alarm_bits(ups(w)) == [us_proto.A_TAMPER]


def test_c3_a_wake_of_both_pins_is_a_pulse_only_if_the_lid_did_not_move() -> None:
    """ESP32-C3, reed idle (open) and lid open: both pins are armed on the low level. A wake
    with both found as they were is a short pulse; one where the lid closed is the lid."""
    w = ff.make_world("water", extra=TAMPER_ON, board=ff.BOARD_C3)
    w.pins[3] = 1
    w.pins[4] = 1
    w.run_cycle(us_node)
    assert w.gpio_wake == ([3, 4], 0)
    w.sleep(2000, us_wake.GPIO_WAKE)  # the reed closed and opened again during the boot
    w.run_cycle(us_node)
    assert kst(w)["pc"] == 1 and w.gpio_wake == ([3, 4], 0)
    w.pins[4] = 0  # the lid closes
    w.sleep(2000, us_wake.GPIO_WAKE)
    w.run_cycle(us_node)
    assert kst(w)["pc"] == 1
    assert alarm_bits(ups(w)) == [0]


class _MovesAfterItsFirstRead(dict):
    """Pad levels where one pin changes right after the firmware first reads it (an edge
    between the cycle's read and its sleep)."""

    def __init__(self, levels: dict, pin: int, then: int) -> None:
        super().__init__(levels)
        self.pin, self.then, self.read = pin, then, False

    def __getitem__(self, key: int) -> int:
        value: int = super().__getitem__(key)
        if key == self.pin and not self.read:
            self.read = True
            super().__setitem__(key, self.then)
        return value


def test_an_input_that_moves_after_its_read_is_armed_not_taken_for_stuck() -> None:
    """The reed closes (or the lid opens) between the cycle's read and its sleep: the input is
    already at the level it is armed for, which wakes the node at once to count it; it is
    not a stuck input to poll (no sensor fault)."""
    for pin, then, tamper in ((25, 0, False), (26, 1, True)):
        w = ff.make_world("water", extra=TAMPER_ON if tamper else None)
        w.pins = _MovesAfterItsFirstRead({**w.pins, 26: 0}, pin, then)
        w.run_cycle(us_node)
        assert (w.ext0, w.ext1) == ((25, 0), ([26], 1) if tamper else None), pin
        assert not [u for u in ups(w) if u.readings.get(us_proto.Q_FLAGS, 0) & us_proto.F_SENSOR_FAULT], pin


# -- the meter alone ---------------------------------------------------------------------

def _hourly(m: object, hours: range, per_hour: int = 1) -> None:
    for h in hours:
        for k in range(per_hour):
            m.pulse(h * 3600 + 60 * k)  # type: ignore[attr-defined]


def test_water_fresh_meter_reports_nothing() -> None:
    st_: dict = {}
    m = us_water.Meter(st_, 1000)
    m.tick(3600)
    assert (m.volume_l(), m.new_alarms(), st_["al"], m.last_hour_lph()) == (0, 0, 0, 0)


def test_water_leak_rises_with_the_24th_hour_of_flow_not_before() -> None:
    """Leak: flow in every one of 24 consecutive hours (23 full ones and the current)."""
    st_: dict = {}
    m = us_water.Meter(st_, 1000)
    _hourly(m, range(23))
    assert not st_["al"] & us_proto.A_LEAK  # 23 hours
    m.tick(23 * 3600)  # the 24th hour begins, nothing flowed in it yet
    assert not st_["al"] & us_proto.A_LEAK
    m.pulse(23 * 3600 + 5)
    assert st_["al"] & us_proto.A_LEAK and m.new_alarms() == us_proto.A_LEAK


def test_water_one_dry_hour_in_the_day_is_no_leak() -> None:
    for dry in (0, 11, 22):  # the oldest, a middle and the last full hour
        st_: dict = {}
        m = us_water.Meter(st_, 1000)
        _hourly(m, range(dry))
        _hourly(m, range(dry + 1, 24))
        assert not st_["al"] & us_proto.A_LEAK, dry


def test_water_leak_clears_on_a_dry_hour_whatever_the_flow_before() -> None:
    st_: dict = {}
    m = us_water.Meter(st_, 1000, burst_lph=10**6)
    _hourly(m, range(25), per_hour=2)
    assert st_["al"] & us_proto.A_LEAK
    m.tick(26 * 3600)  # hour 25 went by dry
    assert not st_["al"] & us_proto.A_LEAK


def test_water_alarms_keep_each_other() -> None:
    """Raising leak or burst keeps the other bits (the tamper bit included)."""
    st_: dict = {"al": us_proto.A_TAMPER}
    m = us_water.Meter(st_, 1000, burst_lph=600)
    _hourly(m, range(24))
    assert st_["al"] == us_proto.A_TAMPER | us_proto.A_LEAK
    for k in range(10):
        m.pulse(24 * 3600 + 10 + k)
    assert st_["al"] == us_proto.A_TAMPER | us_proto.A_LEAK | us_proto.A_BURST


def test_water_burst_threshold_is_reached_not_passed() -> None:
    """Burst when the pulses of one minute, as litres per hour, reach burst_lph: 10 L in a
    minute is 600 L/h; 9 L is not; 9.999 L (599.94 L/h) is not either. The leak's slow
    flow never is."""
    for ml, n, burst in ((1000, 10, True), (1000, 9, False), (9999, 1, False)):
        st_: dict = {}
        m = us_water.Meter(st_, ml, burst_lph=600)
        for k in range(n):
            m.pulse(7200 + k)
        assert bool(st_["al"] & us_proto.A_BURST) == burst, (ml, n)
    st_ = {}
    m = us_water.Meter(st_, 1000, burst_lph=600)
    _hourly(m, range(30))
    assert not st_["al"] & us_proto.A_BURST


def test_water_burst_clears_at_the_end_of_an_hour_below_the_threshold_only() -> None:
    for last_hour_l, kept in ((600, True), (599, False)):
        st_: dict = {}
        m = us_water.Meter(st_, 1000, burst_lph=600)
        for k in range(last_hour_l):
            m.pulse(3600 + k)  # the first ten seconds raise the burst
        m.tick(7200)
        m.end_of_hour()
        assert bool(st_["al"] & us_proto.A_BURST) == kept, last_hour_l


def test_water_hourly_flow_is_the_last_clock_hour_s() -> None:
    st_: dict = {}
    m = us_water.Meter(st_, 1500)
    for t in range(3595, 3600):
        m.pulse(t)  # 5 pulses in hour 0
    for t in (3600, 3601, 7199):
        m.pulse(t)  # 3 in hour 1
    assert m.last_hour_lph() == 7  # 5 x 1.5 L of hour 0
    m.tick(7200)
    assert m.last_hour_lph() == 4  # 3 x 1.5 L of hour 1 (4.5 L, whole litres)
    assert m.volume_l() == 12


def test_water_a_long_sleep_clears_the_day_without_losing_the_count() -> None:
    """Three days without a wake (a clock jump, a long outage): every hour bucket is dry,
    the count stays."""
    st_: dict = {}
    m = us_water.Meter(st_, 1000)
    _hourly(m, range(24))
    assert st_["al"] & us_proto.A_LEAK
    m.tick(24 * 3600 + 3 * 86400)
    assert st_["hb"] == [0] * 24 and not st_["al"] & us_proto.A_LEAK
    assert m.volume_l() == 24


def test_water_flash_is_written_only_for_pulses_it_does_not_hold() -> None:
    st_: dict = {}
    m = us_water.Meter(st_, 1000)
    m.restore(40)  # a cold boot: flash holds 40
    assert (st_["pc"], m.need_flash()) == (40, False)
    m.pulse(10)
    assert m.need_flash()
    m.flashed()
    assert not m.need_flash()
    m.tick(20)
    assert not m.need_flash()
