"""Whole wake cycles on CPython with the fake HAL; frames checked with the gateway codec."""

from __future__ import annotations

import binascii

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.firmware_loader import firmware_module
from tests import fw_fakes as ff
from urbansense.wire.protocol import NodeKeys, parse_header, verify_uplink

us_cobs = firmware_module("us_cobs")
us_node = firmware_module("us_node")
us_proto = firmware_module("us_proto")


KEYS = NodeKeys(binascii.unhexlify(ff.KEY_HEX))


def decode(frame: bytes, last: int | None = None):
    up = verify_uplink(KEYS, frame, parse_header(frame), last)
    assert len(frame) <= 27
    return up


def test_cold_boot_sends_status_for_each_kind() -> None:
    for kind in ("parking", "bin", "water"):
        w = ff.make_world(kind)
        ms = w.run_cycle(us_node)
        assert 1000 <= ms <= 86400000
        ups = [decode(f) for f in w.frames()]
        assert ups[0].ftype == us_proto.T_STATUS
        r = ups[0].readings
        assert r[us_proto.Q_BATTERY_MV] == 3600
        assert r[us_proto.Q_FW_VERSION] == us_node.FW_VERSION
        assert r[us_proto.Q_RESET_CAUSE] == ff.PWRON_RESET
        assert w.wdt_timeout_ms and w.wdt_feeds >= 2
        assert all(not c for _, _, c in w.adverts) and not w.ble_active
        assert ("ble_tx" in w.energy_log and "sensor" in w.energy_log) or kind == "water"


def test_parking_arrival_is_confirmed_reported_and_woken_by_interrupt() -> None:
    w = ff.make_world("parking")
    w.run_cycle(us_node)
    assert w.ext0 == (4, 1)
    mag = w.i2c_devices[0x1C]
    mag.set_field((5000, -5000, 70000))  # a car: INT pin goes high
    assert w.pins[4] == 1
    w.sleep(1000, ff.EXT0_WAKE)
    ms = w.run_cycle(us_node)
    assert ms <= 10000 and w.frames() == []  # first sample: wait for confirmation
    w.sleep(ms)
    w.run_cycle(us_node)
    ups = [decode(f) for f in w.frames()]
    assert [u.readings.get(us_proto.Q_OCCUPIED) for u in ups] == [True]
    assert ups[0].readings[us_proto.Q_EVENTS] == 1
    assert w.ext0 == (4, 1)


def test_bin_reports_crossing_and_emptying() -> None:
    w = ff.make_world("bin", extra={"calibration": {"empty_mm": 1200, "full_mm": 200}})
    tof = w.i2c_devices[0x29]
    tof.default_mm = 1100
    w.run_cycle(us_node)
    fcs = []
    seen = []
    for mm in (1000, 650, 640, 1150):
        tof.default_mm = mm
        w.sleep(900000)
        w.run_cycle(us_node)
        for f in w.frames():
            u = decode(f)
            fcs.append(u.fcnt)
            seen.append(u.readings)
    fills = [r[us_proto.Q_FILL_PCT] for r in seen]
    assert 55 in fills  # 650 mm -> 55 %: crossed 50
    assert any(r.get(us_proto.Q_EVENTS) == 1 for r in seen)  # emptied
    assert fcs == sorted(set(fcs))


def test_water_pulses_alarm_and_hourly_report() -> None:
    w = ff.make_world("water", extra={"calibration": {"ml_per_pulse": 10000, "index_l": 1000},
                                      "thresholds": {"burst_lph": 3000}})
    w.run_cycle(us_node)
    assert w.ext0 == (25, 0)
    frames = []
    for _ in range(6):  # 6 pulses of 10 L within a minute -> 3600 L/h: burst
        w.pins[25] = 0
        w.sleep(4000, ff.EXT0_WAKE)
        w.run_cycle(us_node)
        frames += w.frames()
        w.pins[25] = 1
        w.sleep(4000, ff.EXT0_WAKE)
        w.run_cycle(us_node)
        frames += w.frames()
    alarms = [decode(f).readings for f in frames]
    assert alarms and alarms[0][us_proto.Q_ALARMS] & us_proto.A_BURST
    assert w.nvs["urbansense"]["pulses"] >= 4
    w.sleep(3600 * 1000)
    w.run_cycle(us_node)
    rep = [decode(f).readings for f in w.frames() if decode(f).ftype == us_proto.T_REPORT]
    assert rep[0][us_proto.Q_VOLUME_L] == 1060


@pytest.mark.parametrize("text", [None, "{not json", '{"node_id": 1}',
                                  '{"node_id": 1, "key": "zz' + "0" * 30 + '", "kind": "bin", "board": "b"}',
                                  '{"node_id": 1, "key": "' + "ab" * 16 + '", "kind": "tree", "board": "b"}'])
def test_bad_config_enters_safe_mode_without_leaking_key(text: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    w = ff.make_world("bin")
    if text is None:
        del w.files["config.json"]
    else:
        w.files["config.json"] = text
    ms = us_node.run_cycle(w.hal())
    out = capsys.readouterr().out
    assert ms == us_node.SAFE_MODE_SLEEP_MS
    assert "SAFE MODE" in out
    assert "ab" * 16 not in out and ff.KEY_HEX not in out
    assert w.adverts == []


def test_serial_backlog_ack_and_downlink() -> None:
    from urbansense.wire.protocol import encode_ack

    w = ff.make_world("bin", transport="serial")
    acked: list[int] = []
    state = {"online": False, "dcnt": 5}

    def gateway(data: bytes) -> bytes:
        frame = us_cobs.unwrap(data[:-1])
        up = verify_uplink(KEYS, frame, parse_header(frame), None)
        if not state["online"]:
            return b""
        acked.append(up.fcnt)
        state["dcnt"] += 1
        return us_cobs.wrap(encode_ack(KEYS, 0x01020304, state["dcnt"], up.fcnt,
                                       {us_proto.C_REPORT_INTERVAL_S: 1800}))

    w.uart_peer = gateway
    w.run_cycle(us_node)
    for _ in range(10):
        w.sleep(3600 * 1000)
        w.run_cycle(us_node)
    st_ = firmware_module("us_store").load_rtc(w.hal().machine.RTC())
    assert len(st_["bl"]) == 8 and st_["dr"] > 0
    state["online"] = True
    w.sleep(3600 * 1000)
    w.run_cycle(us_node)
    st_ = firmware_module("us_store").load_rtc(w.hal().machine.RTC())
    # this cycle's frame first (the newest: current readings, true drop count), then the
    # backlog oldest first
    assert st_.get("bl") == [] and len(acked) == 8
    assert acked[0] == max(acked) and acked[1:] == sorted(acked[1:])
    assert st_["dn"][us_proto.C_REPORT_INTERVAL_S] == 1800
    assert st_["dc"] == state["dcnt"]


events = st.lists(st.sampled_from(["cycle", "cycle", "cycle", "power_loss", "wdt"]), max_size=40)


@settings(max_examples=60, deadline=None)
@given(events)
def test_frame_counter_never_repeats(seq: list[str]) -> None:
    w = ff.make_world("bin", extra={"intervals": {"report_interval_s": 60, "measure_s": 60}})
    seen: set[int] = set()
    last = None
    for ev in seq:
        if ev == "power_loss":
            w.power_loss()
        elif ev == "wdt":
            w.watchdog_reset()
        ms = w.run_cycle(us_node)
        for f in w.frames():
            u = decode(f, last)
            assert u.fcnt not in seen
            seen.add(u.fcnt)
            last = u.fcnt
        w.sleep(ms)
    assert w.nvs_writes <= 2 + 2 * seq.count("power_loss") + len(seen) // 256 + 2


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["pulse", "pulse", "hour", "power_loss", "wdt"]), max_size=60))
def test_water_index_never_goes_backwards(seq: list[str]) -> None:
    w = ff.make_world("water")
    volumes: list[int] = []

    def cycle() -> None:
        w.run_cycle(us_node)  # every cycle's frames are checked, the pulse's own included
        for f in w.frames():
            r = decode(f).readings
            if us_proto.Q_VOLUME_L in r:
                assert not volumes or r[us_proto.Q_VOLUME_L] >= volumes[-1]
                volumes.append(r[us_proto.Q_VOLUME_L])

    cycle()
    for ev in seq:
        if ev == "pulse":
            w.pins[25] = 0
            w.sleep(2000, ff.EXT0_WAKE)
            cycle()
            w.pins[25] = 1
            w.sleep(2000, ff.EXT0_WAKE)
        elif ev == "hour":
            w.sleep(3600 * 1000)
        elif ev == "power_loss":
            w.power_loss()
        else:
            w.watchdog_reset()
        cycle()
    assert volumes  # the first report at least


POWER_BOARD = dict(ff.BOARD, pins=dict(ff.BOARD["pins"], sensor_power=27))


def test_bin_powers_its_ranger_only_while_measuring() -> None:
    w = ff.make_world("bin", board=POWER_BOARD, extra={"calibration": {"empty_mm": 1200, "full_mm": 200}})
    w.i2c_devices[0x29].default_mm = 700
    powered_in: list[str] = []
    w.hook = lambda: powered_in.append(w.energy_log[-1] + ":" + str(int(w.sensors_powered())))
    for _ in range(3):
        w.run_cycle(us_node)
        assert w.pins[27] == 0 and w.held[27]  # off, and held off through deep sleep
        w.sleep(900000)
    assert [lvl for _, lvl in w.power_log] == [1, 0] * 3
    # "sensor" is declared before the switch closes and "cpu" only after it opens again
    assert "sensor:0" in powered_in and "cpu:0" in powered_in and "cpu:1" not in powered_in
    reports = [decode(f).readings for f in w.frames()]
    assert not any(r.get(us_proto.Q_FLAGS, 0) & us_proto.F_SENSOR_FAULT for r in reports)


def test_bin_ranger_unpowered_is_a_sensor_fault_not_a_crash() -> None:
    w = ff.make_world("bin", board=dict(POWER_BOARD, pins=dict(POWER_BOARD["pins"], sensor_power=33)))
    w.board = dict(POWER_BOARD)  # the fake switch is on pin 27, the firmware drives 33: never powered
    w.run_cycle(us_node)
    status = decode(w.frames()[0]).readings
    assert status[us_proto.Q_FLAGS] & us_proto.F_SENSOR_FAULT


def test_parking_keeps_the_magnetometer_powered_and_repowers_after_power_loss() -> None:
    w = ff.make_world("parking", board=POWER_BOARD)
    w.run_cycle(us_node)
    assert w.pins[27] == 1 and w.held[27] and w.ext0 == (4, 1)
    for _ in range(3):
        w.sleep(3600 * 1000)
        w.run_cycle(us_node)
        assert w.pins[27] == 1
    assert 0 not in [lvl for _, lvl in w.power_log]
    w.power_loss()
    assert not w.sensors_powered()
    w.run_cycle(us_node)  # cold: switch on, wait for the part, init it again
    assert w.pins[27] == 1 and w.ext0 == (4, 1)
    ups = [decode(f) for f in w.frames()]
    assert ups[0].ftype == us_proto.T_STATUS and not ups[0].readings.get(us_proto.Q_FLAGS, 0) & us_proto.F_SENSOR_FAULT


def _parking_free_poll(w: ff.World, field: list[int]) -> None:
    w.i2c_devices[0x1C].set_field(field)
    w.sleep(600 * 1000)
    w.run_cycle(us_node)


def test_parking_relearned_baseline_survives_a_battery_swap() -> None:
    """The baseline follows slow drift; it is written to flash once it has moved more than
    half the release threshold (bounded writes), so a power loss resumes from it, not from
    the install baseline (which would now read a drifted empty space as a car)."""
    w = ff.make_world("parking")
    w.run_cycle(us_node)
    install = us_store_base(w)
    field = [20000, -5000, 42000]
    writes = w.nvs_writes
    for _ in range(300):  # the space stays empty; z drifts by 0.1 uT per reading, 30 uT in all
        field[2] += 100
        _parking_free_poll(w, field)
        assert all(decode(f).readings.get(us_proto.Q_OCCUPIED) is not True for f in w.frames())
    saved = us_store_base(w)
    assert saved[2] > field[2] - 3000 - 6000  # lags the field by < half the release + drift lag
    base_writes = w.nvs_writes - writes
    assert 3 <= base_writes <= 12  # ~30 uT / 3 uT, not one per reading
    w.power_loss()
    w.run_cycle(us_node)
    ups = [decode(f) for f in w.frames()]
    assert not ups[0].readings.get(us_proto.Q_FLAGS, 0) & us_proto.F_CALIBRATING
    for _ in range(3):
        _parking_free_poll(w, field)
        assert all(decode(f).readings.get(us_proto.Q_OCCUPIED) is not True for f in w.frames())
    assert abs(install[2] - field[2]) > 12000  # the install baseline would have seen a car


def test_parking_config_baseline_change_wins_over_a_relearned_one() -> None:
    cal = {"calibration": {"baseline_nt": [20000, -5000, 42000]}}
    w = ff.make_world("parking", extra=cal)
    w.run_cycle(us_node)
    field = [20000, -5000, 42000]
    for _ in range(60):
        field[2] += 100
        _parking_free_poll(w, field)
    rec = w.nvs["urbansense"]["mag_base"]
    assert rec and len(us_store_list(rec)) == 6  # re-learned from the config baseline
    w.power_loss()
    w.run_cycle(us_node)
    st = firmware_module("us_store").load_rtc(w.hal().machine.RTC())
    assert st["k"]["b"][2] > 42000 + 3000  # the re-learned one
    w.files["config.json"] = ff.config_text("parking", extra={"calibration": {"baseline_nt": [1, 2, 3]}})
    w.power_loss()
    w.run_cycle(us_node)
    st = firmware_module("us_store").load_rtc(w.hal().machine.RTC())
    assert st["k"]["b"] == [1, 2, 3]  # an installer's new baseline is taken


def us_store_list(blob: bytes) -> list[int]:
    return list(firmware_module("us_cbor").decode(blob))


def us_store_base(w: ff.World) -> list[int]:
    return us_store_list(w.nvs["urbansense"]["mag_base"])[:3]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["pulse", "short_pulse", "loss_while_closed", "minute", "hour", "power_loss"]),
                max_size=40))
def test_water_power_loss_costs_at_most_the_pulse_in_flight(seq: list[str]) -> None:
    """Every pulse wake leaves the count in NVS before it sleeps: after a power loss at any
    point between wakes, the next reported index is exactly the pulses counted (a pulse
    whose wake the power loss interrupts is the only one that can be lost), and a reed found
    closed after the power came back is not counted again."""
    w = ff.make_world("water", extra={"calibration": {"ml_per_pulse": 1000}})
    w.run_cycle(us_node)
    pulses = 0
    for ev in seq:
        if ev in ("pulse", "short_pulse"):
            pulses += 1
            w.pins[25] = 0
            w.sleep(2000, ff.EXT0_WAKE)
            if ev == "pulse":  # the reed is still closed at the wake; its release wakes again
                w.run_cycle(us_node)
                w.pins[25] = 1
                w.sleep(2000, ff.EXT0_WAKE)
            else:  # released within the boot: the wake alone proves the pulse
                w.pins[25] = 1
        elif ev == "loss_while_closed":  # counted, then the power goes with the reed closed
            pulses += 1
            w.pins[25] = 0
            w.sleep(2000, ff.EXT0_WAKE)
            w.run_cycle(us_node)
            w.power_loss()
            w.run_cycle(us_node)  # finds the reed closed: the same pulse, not a new one
            assert w.nvs["urbansense"]["pulses"] == pulses
            w.pins[25] = 1
            w.sleep(2000, ff.EXT0_WAKE)
        elif ev == "minute":
            w.sleep(60_000)
        elif ev == "hour":
            w.sleep(3600_000)
        else:
            w.power_loss()
        w.run_cycle(us_node)
        assert w.nvs["urbansense"].get("pulses", 0) == pulses
    w.sleep(3600_000)
    w.run_cycle(us_node)
    reports = [decode(f).readings for f in w.frames() if decode(f).ftype == us_proto.T_REPORT]
    assert reports[-1][us_proto.Q_VOLUME_L] == pulses
