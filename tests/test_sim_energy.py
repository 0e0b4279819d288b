"""Energy accounting against a cycle computed by hand, and the battery-life arithmetic."""

from __future__ import annotations

import types
from typing import Any

import pytest

from simulator.energy import FALLBACK_PROFILE, HOURS_PER_YEAR, Cell
from simulator.node import BLE_INIT_MS_DEFAULT, RADIO_RAMP_US, pdu_airtime_s
from simulator.sim import Simulation

ADV = bytes([30, 0xFF, 0xFF, 0xFF]) + bytes(27)  # 31 bytes; not a frame of ours


def _fake_firmware() -> types.ModuleType:
    fw = types.ModuleType("fake_node")

    def run_cycle(hal: Any) -> int:
        hal.energy("cpu")
        hal.time.sleep_ms(10)
        hal.energy("sensor")
        hal.time.sleep_ms(20)
        ble = hal.bluetooth.BLE()
        ble.active(True)
        hal.energy("ble_tx")
        ble.gap_advertise(100_000, adv_data=ADV, connectable=False)
        hal.time.sleep_ms(350)
        ble.gap_advertise(None)
        ble.active(False)
        hal.energy("cpu")
        return 60_000

    fw.run_cycle = run_cycle  # type: ignore[attr-defined]
    return fw


SCENARIO = {
    "sim": {"name": "energy", "seed": 3, "board": "no-such-board"},  # fallback profile: known figures
    "gateways": [{"id": "gw", "x": 0.0, "y": 0.0}],
    "nodes": [{"kind": "water", "count": 1}],
}


def test_one_cycle_by_hand() -> None:
    sim = Simulation(SCENARIO, firmware=_fake_firmware())
    node = sim.nodes[0]
    t_boot = sim.engine.next_time()
    assert t_boot is not None
    sim.engine.run_until(t_boot)  # exactly one cycle
    assert node.cycles == 1
    f = {k: v["value"] for k, v in FALLBACK_PROFILE.items()}
    active_ua = f["active_ma"] * 1000
    expected = {
        "boot": f["boot_mc"] * 1000,
        "cpu": active_ua * (sim.firmware_cpu_s + 0.010 + BLE_INIT_MS_DEFAULT / 1000 + 0.350),
        "sensor": (active_ua + node.sensor_active_ua) * 0.020,
        # 4 advertising events in 350 ms at 100 ms (+ 0-10 ms advDelay each), 3 channels each
        "ble_tx": 4 * 3 * (pdu_airtime_s(31) + RADIO_RAMP_US * 1e-6) * f["ble_tx_ma"] * 1000,
    }
    for cat, uc in expected.items():
        assert node.meter.uc[cat] == pytest.approx(uc, rel=1e-9), cat
    assert pdu_airtime_s(31) == pytest.approx(376e-6)  # the FIELD-FACTS adv event
    # awake time: boot + 10 + ble init + 20 + 350 ms
    assert node.t - t_boot == pytest.approx(f["boot_ms"] / 1000 + sim.firmware_cpu_s + 0.010 + BLE_INIT_MS_DEFAULT / 1000 + 0.020 + 0.350)
    # then 60 s of deep sleep at the board's deep-sleep current
    t_sleep = node.t
    sim.engine.run_until(t_sleep + 59.0)
    uc = node.charge_to(t_sleep + 59.0)
    assert uc["sleep"] == pytest.approx(f["deep_sleep_ua"] * 59.0)
    assert sim.engine.next_time() == pytest.approx(t_sleep + 60.0)


def test_battery_life_arithmetic() -> None:
    cell = Cell()
    avg_ua = 20.0
    usable_uah = 19e6 * 0.85
    per_year_uah = avg_ua * HOURS_PER_YEAR + 19e6 * 0.01
    assert cell.life_years(avg_ua) == pytest.approx(usable_uah / per_year_uah)
    assert cell.life_years(0.0) == pytest.approx(85.0)  # self-discharge alone
    assert cell.voltage_mv(0.0) > cell.voltage_mv(0.99)
