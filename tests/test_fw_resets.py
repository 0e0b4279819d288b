"""Resets that are not a deep-sleep wake, the watchdog crash backoff, and config validation."""

from __future__ import annotations

import binascii
import json

import pytest

from simulator.firmware_loader import firmware_module
from tests import fw_fakes as ff
from urbansense.wire.protocol import NodeKeys, Uplink, parse_header, verify_uplink

us_node = firmware_module("us_node")
us_proto = firmware_module("us_proto")


KEYS = NodeKeys(binascii.unhexlify(ff.KEY_HEX))


class Hang(BaseException):
    """The cycle stops here, as if stuck until the watchdog bites (no handler catches it)."""


def ups(w: ff.World) -> list[Uplink]:
    return [verify_uplink(KEYS, f, parse_header(f), None) for f in w.frames()]


def statuses(w: ff.World) -> list[dict[int, int | bool]]:
    return [u.readings for u in ups(w) if u.ftype == us_proto.T_STATUS]


def hang_in_sensor(w: ff.World) -> None:
    def hook() -> None:
        if w.energy_log and w.energy_log[-1] == "sensor":
            raise Hang

    w.hook = hook


def bite(w: ff.World) -> None:
    """Run a cycle that hangs in the bin's ranging; the watchdog resets the chip."""
    hang_in_sensor(w)
    with pytest.raises(Hang):
        w.run_cycle(us_node)
    w.hook = None
    w.watchdog_reset()


def warm_bin() -> ff.World:
    w = ff.make_world("bin")
    w.sleep(w.run_cycle(us_node))
    w.run_cycle(us_node)
    assert statuses(w) == []  # a deep-sleep wake in the day: no status
    return w


@pytest.mark.parametrize("cause", [ff.WDT_RESET, ff.HARD_RESET, ff.SOFT_RESET])
def test_every_boot_not_from_deep_sleep_sends_status_though_rtc_survived(cause: int) -> None:
    w = warm_bin()
    w.reset_cause = cause  # RTC memory intact: the node is not "cold"
    w.wake_reason = 0
    w.run_cycle(us_node)
    st = statuses(w)
    assert st and st[0][us_proto.Q_RESET_CAUSE] == cause


def test_one_watchdog_reset_retries_at_once() -> None:
    w = warm_bin()
    tof = w.i2c_devices[0x29]
    bite(w)
    before = tof.ranges_done
    ms = w.run_cycle(us_node)
    assert statuses(w)[0][us_proto.Q_RESET_CAUSE] == ff.WDT_RESET
    assert tof.ranges_done > before and ms <= 900 * 1000  # measured, normal schedule


def test_two_watchdog_resets_in_a_row_sleep_long_then_double() -> None:
    w = warm_bin()
    tof = w.i2c_devices[0x29]
    bite(w)
    bite(w)
    before = tof.ranges_done
    ms = w.run_cycle(us_node)
    assert ms == 3600 * 1000  # backoff: 1 h
    assert tof.ranges_done == before  # the kind's logic (what hangs) is not retried yet
    assert statuses(w)[0][us_proto.Q_RESET_CAUSE] == ff.WDT_RESET  # but the reset is reported
    w.sleep(ms)
    bite(w)  # still hangs after the backoff: the count goes on
    assert w.run_cycle(us_node) == 7200 * 1000
    w.sleep(7200 * 1000)
    w.run_cycle(us_node)  # the fault went away: a whole cycle resets the count
    assert tof.ranges_done > before
    bite(w)
    assert w.run_cycle(us_node) <= 900 * 1000  # a single reset again: no backoff


def test_backoff_is_capped_at_a_day() -> None:
    assert [us_node.crash_backoff_s(n) for n in range(1, 9)] == [0, 3600, 7200, 14400, 28800, 57600, 86400, 86400]
    assert us_node.crash_backoff_s(10**6) == 86400


def _cfg(kind: str, transport: str = "ble", **sections: dict[str, object]) -> str:
    cfg = json.loads(ff.config_text(kind, transport=transport))
    for k, v in sections.items():
        cfg[k] = v
    return json.dumps(cfg)


BAD = [
    ("water", {"intervals": {"report_interval_s": 0}}, "intervals.report_interval_s"),
    ("bin", {"intervals": {"measure_s": 0}}, "intervals.measure_s"),
    ("bin", {"intervals": {"measure_s": 59}}, "intervals.measure_s"),
    ("bin", {"intervals": {"measure_s": "900"}}, "intervals.measure_s"),
    ("bin", {"intervals": {"measure_s": True}}, "intervals.measure_s"),
    ("parking", {"intervals": {"heartbeat_s": 10}}, "intervals.heartbeat_s"),
    ("parking", {"intervals": {"confirm_gap_s": 0}}, "intervals.confirm_gap_s"),
    ("parking", {"intervals": {"free_poll_s": 30}}, "intervals.free_poll_s"),
    ("parking", {"intervals": {"status_s": 1}}, "intervals.status_s"),
    ("parking", {"thresholds": {"mag_threshold_ut": 0}}, "thresholds.mag_threshold_ut"),
    ("parking", {"thresholds": {"mag_release_ut": 12}}, "thresholds.mag_release_ut"),
    ("parking", {"thresholds": {"confirm_samples": 0}}, "thresholds.confirm_samples"),
    ("parking", {"calibration": {"baseline_nt": [1, 2]}}, "calibration.baseline_nt"),
    ("bin", {"thresholds": {"fill_pct": []}}, "thresholds.fill_pct"),
    ("bin", {"thresholds": {"fill_pct": [50, 150]}}, "thresholds.fill_pct"),
    ("bin", {"thresholds": {"pings": 0}}, "thresholds.pings"),
    ("bin", {"calibration": {"empty_mm": 200, "full_mm": 250}}, "empty_mm"),
    ("bin", {"sensor": "jsnsr04t", "calibration": {"full_mm": 150}}, "full_mm"),
    ("bin", {"sensor": "sonar"}, "sensor"),
    ("water", {"calibration": {"ml_per_pulse": 0}}, "calibration.ml_per_pulse"),
    ("water", {"calibration": {"tamper": 1}}, "calibration.tamper"),
    ("water", {"thresholds": {"burst_lph": -5}}, "thresholds.burst_lph"),
    ("water", {"serial": {"backlog": 0}}, "serial.backlog"),
    ("water", {"ble": {"interval_us": 100}}, "ble.interval_us"),
]


@pytest.mark.parametrize(("kind", "sections", "key"), BAD, ids=[b[2] + "-" + json.dumps(b[1]) for b in BAD])
def test_bad_setting_enters_safe_mode_naming_the_key(kind: str, sections: dict[str, dict[str, object]], key: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    w = ff.make_world(kind)
    w.files["config.json"] = _cfg(kind, **sections)
    ms = w.run_cycle(us_node)
    out = capsys.readouterr().out
    assert ms == us_node.SAFE_MODE_SLEEP_MS
    assert "SAFE MODE" in out and key in out
    assert ff.KEY_HEX not in out
    assert w.adverts == [] and w.rtc_mem == b""


@pytest.mark.parametrize(("kind", "sections"), [
    ("parking", {"intervals": {"free_poll_s": 0, "confirm_gap_s": 8}, "thresholds": {"mag_release_ut": 6}}),
    ("bin", {"sensor": "jsnsr04t", "calibration": {"empty_mm": 1500, "full_mm": 300}}),
    ("water", {"intervals": {"report_interval_s": 60}, "calibration": {"tamper": False}}),
])
def test_good_settings_run(kind: str, sections: dict[str, dict[str, object]]) -> None:
    w = ff.make_world(kind)
    w.files["config.json"] = _cfg(kind, **sections)
    assert w.run_cycle(us_node) != us_node.SAFE_MODE_SLEEP_MS
    assert statuses(w)


def test_water_report_every_minute_is_the_floor_not_a_crash() -> None:
    w = ff.make_world("water")
    w.files["config.json"] = _cfg("water", intervals={"report_interval_s": 60})
    for _ in range(3):
        ms = w.run_cycle(us_node)
        assert ms >= 1000
        assert not any(s.get(us_proto.Q_FLAGS, 0) & us_proto.F_SENSOR_FAULT for s in statuses(w))
        w.sleep(ms)
