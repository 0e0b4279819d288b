"""The parking detector at its edges: thresholds met exactly, the interrupt it plans, the
magnetometer's sampling and time-out, the installer's empty-space calibration, the config
check, and the wake cycle's settings (us_parking through us_node)."""

from __future__ import annotations

import binascii
from typing import Any

import pytest

from simulator.firmware_loader import firmware_module
from tests import fw_fakes as ff
from urbansense.wire.protocol import NodeKeys, Uplink, parse_header, verify_uplink

us_config = firmware_module("us_config")
us_lis3mdl = firmware_module("us_lis3mdl")
us_node = firmware_module("us_node")
us_parking = firmware_module("us_parking")
us_proto = firmware_module("us_proto")
us_store = firmware_module("us_store")

KEYS = NodeKeys(binascii.unhexlify(ff.KEY_HEX))
ON, OFF = 12000, 6000


def ups(w: ff.World) -> list[Uplink]:
    return [verify_uplink(KEYS, f, parse_header(f), None) for f in w.frames()]


def kst(w: ff.World) -> dict:
    st = us_store.load_rtc(w.hal().machine.RTC())
    assert st is not None
    return st["k"]  # type: ignore[no-any-return]


# -- the detector ----------------------------------------------------------------------

def test_a_deviation_exactly_at_a_threshold_does_not_cross_it() -> None:
    """Occupied needs more than on_nt from the baseline, free less than off_nt; a free
    reading exactly off_nt away is no quiet one (the baseline does not follow it)."""
    st: dict = {"b": [0, 0, 0]}
    det = us_parking.Detector(st, ON, OFF, 1)
    assert not det.update([ON, 0, 0]) and not det.occupied
    assert not det.update([OFF, 0, 0]) and st["b"] == [0, 0, 0]
    assert det.update([ON + 1, 0, 0]) and det.occupied
    assert not det.update([0, OFF, 0]) and det.occupied
    assert det.update([0, OFF - 1, 0]) and not det.occupied
    assert not det.update([OFF - 1, 0, 0]) and st["b"] == [(OFF - 1) >> 5, 0, 0]


def _occupied(base: list[int], last: list[int]) -> Any:
    return us_parking.Detector({"b": base, "o": 1, "l": last}, ON, OFF, 1)


def test_the_occupied_interrupt_watches_the_axis_the_car_lowered_most() -> None:
    """Its threshold halfway between the car's and the baseline's magnitude on that axis; no
    plan (a timer poll instead) when no axis dropped by two thirds of the margin."""
    base = [20000, -30000, 42000]
    assert _occupied(base, [19000, -18000, 43000]).interrupt_plan(ON) == (2, 24000)  # y: 4 >> 1
    assert _occupied(base, [5000, -29000, 41000]).interrupt_plan(ON) == (4, 12500)  # x
    assert _occupied(base, [21000, -30000, 30000]).interrupt_plan(ON) == (1, 36000)  # z
    assert _occupied(base, [21000, -31000, 50000]).interrupt_plan(ON) is None  # every axis rose
    assert _occupied(base, [20000, -30000 + 7000, 42000]).interrupt_plan(ON) is None  # 7000 < 8000
    assert _occupied(base, [20000, -30000 + 8000, 42000]).interrupt_plan(ON) == (2, 26000)  # 8000: enough
    # 13 uT: two thirds is 8666.67 nT, a drop of 8666 nT is short of it by a fraction only
    assert _occupied(base, [20000, -30000 + 8666, 42000]).interrupt_plan(13000) == (2, 25667)
    assert _occupied(base, [20000, -30000 + 8665, 42000]).interrupt_plan(13000) is None


# -- the magnetometer's samples ----------------------------------------------------------

class _Part:
    """The driver's side of a magnetometer: raw samples, each ready after `late` polls."""

    def __init__(self, samples: list[tuple[int, int, int]], late: int = 0) -> None:
        self.samples, self.late, self.polls = list(samples), late, 0

    def read_raw_if_ready(self) -> tuple[int, int, int] | None:
        self.polls += 1
        if self.polls <= self.late:
            return None
        self.polls = 0
        return self.samples.pop(0)


def test_a_sample_is_the_mean_of_four_readings_waited_for() -> None:
    w = ff.make_world("parking")
    hal = w.hal()
    raw = [(6842, 0, -6842), (6843, 1, 0), (0, 2, 6842), (1, 3, 1), (9999, 9999, 9999)]
    t0 = w.clock_ms
    got = us_parking.sample_nt(_Part(raw, late=1), hal)
    nt = us_lis3mdl.lsb_to_nt
    assert got == [nt(13686) // 4, nt(6) // 4, nt(1) // 4]
    assert w.clock_ms - t0 == 4 * 2  # one 2 ms poll for each


def test_a_part_that_never_has_data_times_out_after_200_ms() -> None:
    w = ff.make_world("parking")
    t0 = w.clock_ms
    with pytest.raises(OSError) as info:
        us_parking.sample_nt(_Part([], late=10**6), w.hal())
    assert info.value.args[0] == 116  # ETIMEDOUT
    assert w.clock_ms - t0 == 202


def test_calibrate_empty_stores_the_mean_of_the_install_samples() -> None:
    """Eight samples of two readings each (the install boot's), stored alone or tagged with
    the config baseline; the baseline returned is what the node then starts from."""
    w = ff.make_world("parking")
    hal = w.hal()
    readings = [(1000 + i, -2000 - i, 3000 + 2 * i) for i in range(16)]
    base = us_parking.calibrate_empty(_Part(readings, late=1), hal, hal.esp32.NVS("urbansense"), None)
    nt = us_lis3mdl.lsb_to_nt
    want = [sum(nt(readings[2 * k][a] + readings[2 * k + 1][a]) // 2 for k in range(8)) // 8 for a in range(3)]
    assert base == want
    assert us_store.nvs_get_obj(hal.esp32.NVS("urbansense"), "mag_base") == want
    tagged = us_parking.calibrate_empty(_Part(readings), hal, hal.esp32.NVS("urbansense"), [1, 2, 3])
    assert tagged == want and us_store.nvs_get_obj(hal.esp32.NVS("urbansense"), "mag_base") == [*want, 1, 2, 3]


def test_a_release_threshold_not_below_the_occupied_one_is_refused_by_name() -> None:
    us_parking.check_config({"thresholds": {"mag_threshold_ut": 20, "mag_release_ut": 19}})
    us_parking.check_config({"thresholds": {}})
    for th, on in (({"mag_release_ut": 12}, 12), ({"mag_threshold_ut": 20, "mag_release_ut": 20}, 20)):
        with pytest.raises(us_config.ConfigError) as info:
            us_parking.check_config({"thresholds": th})
        assert str(info.value) == f"thresholds.mag_release_ut must be below thresholds.mag_threshold_ut ({on})"


# -- the wake cycle ----------------------------------------------------------------------

FIELD = [20000, -5000, 42000]  # the fake part's empty space (its default field)


def _wake(w: ff.World, field: list[int], ms: int, reason: int = ff.TIMER_WAKE) -> int:
    w.i2c_devices[0x1C].set_field(field)
    w.sleep(ms, reason)
    return w.run_cycle(us_node)  # type: ignore[no-any-return]


def _flags(w: ff.World) -> int:
    return sum(u.readings.get(us_proto.Q_FLAGS, 0) for u in ups(w))


def test_the_parking_cycle_follows_its_configured_thresholds_and_intervals() -> None:
    """Install (free, calibrating, the any-axis interrupt, a free-space poll), a car that must
    be confirmed thrice `confirm_gap_s` apart, a car that raised every axis (occupied poll),
    the heartbeat after a change, and the configured release (14 uT, not the default 10)."""
    cfg = {"intervals": {"free_poll_s": 900, "heartbeat_s": 7200, "confirm_gap_s": 5, "occupied_poll_s": 1200},
           "thresholds": {"mag_threshold_ut": 20, "mag_release_ut": 14, "confirm_samples": 3}}
    w = ff.make_world("parking", extra=cfg)
    mag = w.i2c_devices[0x1C]
    assert w.run_cycle(us_node) == 900_000
    assert w.ext0 == (4, 1) and mag.regs[0x30] >> 5 == 7  # any axis
    assert _flags(w) & us_proto.F_CALIBRATING
    report = [u for u in ups(w) if u.ftype == us_proto.T_REPORT]
    assert [(r.readings[us_proto.Q_OCCUPIED], us_proto.Q_BATTERY_MV in r.readings) for r in report] == [(False, True)]
    assert w.energy_log[w.energy_log.index("sensor") + 1] == "cpu"  # the part's work is over
    car = [FIELD[0], FIELD[1], FIELD[2] + 19000]  # 19 uT: under the configured 20
    assert _wake(w, car, 60_000) == 900_000 and not ups(w)
    car[2] = FIELD[2] + 21000  # every axis up: no axis to watch for the release
    for n in (1, 2):
        assert _wake(w, car, 5000 if n > 1 else 60_000, ff.EXT0_WAKE) == 5000 and not ups(w)
        assert mag.regs[0x30] & 1 == 0  # confirming: no interrupt
    assert _wake(w, car, 5000) == 1_200_000
    assert [u.readings[us_proto.Q_OCCUPIED] for u in ups(w)] == [True]
    st = kst(w)
    assert st["ev"] == 0 and 0 <= w.hal().time.time() - (st["hb"] - 7200) <= 2  # from this wake
    leaving = [FIELD[0], FIELD[1], FIELD[2] + 12000]  # 12 uT away: under the release
    for n in range(3):
        _wake(w, leaving, 1_200_000)
        assert kst(w)["o"] == (0 if n == 2 else 1)


@pytest.mark.parametrize(("threshold_ut", "away_nt", "released"), [(13, 6250, False), (13, 5700, True)])
def test_the_default_release_is_half_the_threshold_in_whole_microtesla(
        threshold_ut: int, away_nt: int, released: bool) -> None:
    """13 uT occupied: release at 6 uT (13 // 2), not 6.5."""
    w = ff.make_world("parking", extra={"thresholds": {"mag_threshold_ut": threshold_ut, "confirm_samples": 1}})
    w.run_cycle(us_node)
    _wake(w, [FIELD[0], FIELD[1], FIELD[2] + 30000], 60_000, ff.EXT0_WAKE)
    assert kst(w)["o"] == 1
    b = kst(w)["b"]
    _wake(w, [b[0], b[1], b[2] + away_nt], 600_000)
    assert kst(w)["o"] == (0 if released else 1)


def test_a_warm_wake_rewrites_no_interrupt_register_the_part_holds() -> None:
    w = ff.make_world("parking")
    w.run_cycle(us_node)
    mag = w.i2c_devices[0x1C]
    for reason in (ff.TIMER_WAKE, ff.TIMER_WAKE):
        mag.writes.clear()
        _wake(w, FIELD, 600_000, reason)
        assert not [r for r, _ in mag.writes if 0x30 <= r <= 0x33]
    w.watchdog_reset()  # the part stayed powered, but what it holds is not known
    mag.writes.clear()
    w.run_cycle(us_node)
    assert {r for r, _ in mag.writes} >= {0x30, 0x32, 0x33} and not _flags(w) & us_proto.F_SENSOR_FAULT


def test_a_part_at_the_other_address_is_found_by_the_board_file() -> None:
    board = dict(ff.BOARD, lis3mdl_addr=us_lis3mdl.ADDR_SA1_HIGH)
    w = ff.World(ff.config_text("parking"), board)
    w.i2c_devices[us_lis3mdl.ADDR_SA1_HIGH] = ff.FakeLIS3MDL(int_pin=4, world=w)
    w.adc_uv[35] = 1800000
    w.run_cycle(us_node)
    assert not _flags(w) & us_proto.F_SENSOR_FAULT and _flags(w) & us_proto.F_CALIBRATING
    assert kst(w)["b"] == [19995, -5004, 41992] or len(kst(w)["b"]) == 3


def test_downlinks_set_the_threshold_and_the_heartbeat_and_keep_a_hysteresis() -> None:
    """A serial parking node told 8 uT (its configured release) and a 2 h heartbeat: the
    release becomes half of it (4 uT), so a reading 5 uT away is no quiet one (the baseline
    stays) and one 3 uT away is (the baseline follows it)."""
    from tests.test_fw_serial import Gateway

    w = ff.make_world("parking", transport="serial", extra={"thresholds": {"mag_release_ut": 8}})
    gw = Gateway()
    w.uart_peer = gw
    gw.commands = {us_proto.C_MAG_THRESHOLD_UT: 8, us_proto.C_HEARTBEAT_S: 7200}
    w.run_cycle(us_node)
    gw.commands = None
    base = list(kst(w)["b"])
    _wake(w, [base[0] + 5000, base[1], base[2]], 600_000)
    assert kst(w)["b"] == base and kst(w)["o"] == 0
    _wake(w, [base[0] + 3000, base[1], base[2]], 600_000)
    assert kst(w)["b"][0] == base[0] + (3000 >> 5)
    _wake(w, [base[0] + 9000, base[1], base[2]], 600_000, ff.EXT0_WAKE)  # over 8 uT: a car
    _wake(w, [base[0] + 9000, base[1], base[2]], 8000)
    assert kst(w)["o"] == 1 and 0 <= w.hal().time.time() - (kst(w)["hb"] - 7200) <= 2


def test_a_part_slow_to_have_its_samples_is_waited_for() -> None:
    """At 80 Hz a sample takes 12.5 ms: the install and every wake poll until it is there."""
    w = ff.make_world("parking")
    mag = w.i2c_devices[0x1C]
    mag.late_polls = 2
    w.run_cycle(us_node)
    assert not _flags(w) & us_proto.F_SENSOR_FAULT and len(kst(w)["b"]) == 3
    _wake(w, [FIELD[0], FIELD[1], FIELD[2] + 30000], 60_000, ff.EXT0_WAKE)
    assert not _flags(w) & us_proto.F_SENSOR_FAULT and kst(w)["s"] == 1


def _node(w: ff.World, now_s: int = 0, extra: dict | None = None) -> Any:
    cfg = us_node.parse_config(ff.config_text("parking", extra=extra))
    node = us_node.Node(w.hal(), cfg, ff.BOARD, {}, w.hal().esp32.NVS("urbansense"), False)
    node.now_s = now_s
    return node


def test_a_relearned_baseline_is_written_past_half_the_release_and_at_most_hourly() -> None:
    w = ff.make_world("parking")
    st: dict = {"b": [0, 0, 3000], "bs": [0, 0, 0]}  # moved exactly half the 6 uT release
    us_parking._save_base(_node(w, 0), st, OFF)
    assert w.nvs_writes == 0
    st["b"] = [0, 0, 3001]
    us_parking._save_base(_node(w, 0), st, OFF)  # never written before: due at once, at time 0
    assert w.nvs_writes == 1 and st["bs"] == [0, 0, 3001] and st["bt"] == 3600
    st["b"] = [0, 0, 9000]
    us_parking._save_base(_node(w, 3599), st, OFF)  # moved again, within the hour
    assert w.nvs_writes == 1
    us_parking._save_base(_node(w, 3600), st, OFF)  # the hour is up, to the second
    assert w.nvs_writes == 2 and us_store.nvs_get_obj(w.hal().esp32.NVS("urbansense"), "mag_base") == [0, 0, 9000]


def test_a_stored_baseline_is_read_as_three_axes() -> None:
    """Stored tagged with a config baseline ([x, y, z, cx, cy, cz]): the node starts from
    [x, y, z] while config.json still names that baseline, and when it names none."""
    w = ff.make_world("parking")
    us_store.nvs_set_obj(w.hal().esp32.NVS("urbansense"), "mag_base", [1, 2, 3, 4, 5, 6])
    assert us_parking._load_base(_node(w)) == [1, 2, 3]
    assert us_parking._load_base(_node(w, extra={"calibration": {"baseline_nt": [4, 5, 6]}})) == [1, 2, 3]
    assert us_parking._load_base(_node(w, extra={"calibration": {"baseline_nt": [7, 8, 9]}})) == [7, 8, 9]


def test_without_configured_intervals_a_space_is_polled_every_ten_minutes() -> None:
    """Free: the interrupt and a 600 s poll (a car that weakens the field crosses no single
    threshold); occupied by a car the interrupt cannot watch for: a 600 s poll."""
    w = ff.make_world("parking", extra={"thresholds": {"confirm_samples": 1}})
    assert w.run_cycle(us_node) == 600_000 and w.ext0 == (4, 1)
    assert _wake(w, [FIELD[0], FIELD[1], FIELD[2] + 30000], 1000, ff.EXT0_WAKE) == 600_000
    assert kst(w)["o"] == 1 and w.ext0 is None
