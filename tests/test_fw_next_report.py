"""What a node's next report restores after a lost frame (README, docs/GATEWAY.md "What is
promised"): a parking sensor's heartbeat carries the current ``occupied``, a bin's hourly
report the current ``fill`` with no crossing to trigger it. A BLE frame is never acked, so a
lost arrival or crossing is only ever repaired by these. (A water meter's REPORT carrying its
cumulative index: tests/test_fw_node.py::test_water_pulses_alarm_and_hourly_report.)
"""

from __future__ import annotations

import binascii

from simulator.firmware_loader import firmware_module
from tests import fw_fakes as ff
from urbansense.wire.protocol import NodeKeys, Uplink, parse_header, verify_uplink

us_node = firmware_module("us_node")
us_proto = firmware_module("us_proto")
KEYS = NodeKeys(binascii.unhexlify(ff.KEY_HEX))
FIELD = [20000, -5000, 42000]  # nT: the fake part's empty space (its default field)


def ups(w: ff.World) -> list[Uplink]:
    return [verify_uplink(KEYS, f, parse_header(f), None) for f in w.frames()]


def _wake(w: ff.World, field: list[int], ms: int, reason: int = ff.TIMER_WAKE) -> list[Uplink]:
    w.i2c_devices[0x1C].set_field(field)
    w.sleep(ms, reason)
    w.run_cycle(us_node)
    return ups(w)


def test_a_parking_heartbeat_carries_the_current_occupancy() -> None:
    """The arrival's report (lost on air, say) is the last change; the space stays taken.
    The first frame after it is the heartbeat, `heartbeat_s` later, and it says occupied."""
    cfg = {"intervals": {"heartbeat_s": 7200, "confirm_gap_s": 5, "occupied_poll_s": 1200},
           "thresholds": {"mag_threshold_ut": 20, "confirm_samples": 3}}
    w = ff.make_world("parking", extra=cfg)
    w.run_cycle(us_node)
    car = [FIELD[0], FIELD[1], FIELD[2] + 21000]
    _wake(w, car, 60_000, ff.EXT0_WAKE)
    _wake(w, car, 5000, ff.EXT0_WAKE)
    arrival = _wake(w, car, 5000)
    assert [u.readings[us_proto.Q_OCCUPIED] for u in arrival] == [True]
    polls = 0
    while not (sent := _wake(w, car, 1_200_000)):
        polls += 1
    assert polls == 5  # nothing between the arrival and the heartbeat 7200 s later
    assert [(u.ftype, u.readings[us_proto.Q_OCCUPIED]) for u in sent] == [(us_proto.T_REPORT, True)]


def test_a_bin_reports_its_current_fill_hourly_without_a_crossing() -> None:
    """The crossing to 55 % reported (and lost, say); the level then creeps without crossing
    a threshold: the next report, an hour after the last, carries the current fill."""
    w = ff.make_world("bin", extra={"calibration": {"empty_mm": 1200, "full_mm": 200}})
    tof = w.i2c_devices[0x29]
    tof.default_mm = 1100
    w.run_cycle(us_node)
    w.frames()
    tof.default_mm = 650
    w.sleep(900_000)
    w.run_cycle(us_node)
    assert [verify_uplink(KEYS, f, parse_header(f), None).readings[us_proto.Q_FILL_PCT] for f in w.frames()] == [55]
    fills = []
    for mm in (645, 640, 635, 630):  # 15 minutes apart: no threshold crossed
        tof.default_mm = mm
        w.sleep(900_000)
        w.run_cycle(us_node)
        fills.append([u.readings[us_proto.Q_FILL_PCT] for u in
                      (verify_uplink(KEYS, f, parse_header(f), None) for f in w.frames())])
    assert fills == [[], [], [], [57]]  # 630 mm: 57 %, an hour after the crossing's report
