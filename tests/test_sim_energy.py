"""Energy accounting against a cycle computed by hand, and the battery-life arithmetic."""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import pytest

from simulator.advertising import RADIO_RAMP_US, pdu_airtime_s
from simulator.energy import BOARDS_DIR, FALLBACK_PROFILE, HOURS_PER_YEAR, Cell
from simulator.firmware_loader import firmware_module
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
    ble_init_s = f["ble_init_ms"] / 1000
    expected = {
        "boot": f["boot_mc"] * 1000,
        "cpu": active_ua * (sim.firmware_cpu_s + 0.010 + ble_init_s + 0.350),
        "sensor": (active_ua + node.sensor_active_ua) * 0.020,
        # 4 advertising events in 350 ms at 100 ms (+ 0-10 ms advDelay each), 3 channels each
        "ble_tx": 4 * 3 * (pdu_airtime_s(31) + RADIO_RAMP_US * 1e-6) * f["ble_tx_ma"] * 1000,
    }
    for cat, uc in expected.items():
        assert node.meter.uc[cat] == pytest.approx(uc, rel=1e-9), cat
    assert pdu_airtime_s(31) == pytest.approx(376e-6)  # the FIELD-FACTS adv event
    # awake time: boot + 10 + ble init + 20 + 350 ms
    assert node.t - t_boot == pytest.approx(f["boot_ms"] / 1000 + sim.firmware_cpu_s + 0.010 + ble_init_s + 0.020 + 0.350)
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
    assert cell.uncapped_life_years(avg_ua) == pytest.approx(usable_uah / per_year_uah)
    assert cell.uncapped_life_years(0.0) == pytest.approx(85.0)  # self-discharge alone
    # Shown capped at the cell's rated shelf life (issue 12), and said to be.
    assert cell.life_years(avg_ua) == cell.shelf_life_years == 20.0 and cell.capped(avg_ua)
    assert cell.life_years(1000.0) == pytest.approx(cell.uncapped_life_years(1000.0))
    assert not cell.capped(1000.0)
    assert cell.voltage_mv(0.0) > cell.voltage_mv(0.99)


def _board_dir(tmp_path: Path, name: str, **power: dict[str, Any]) -> Path:
    board = json.loads((BOARDS_DIR / "city-wroom32e.json").read_text())
    board["power"].update(power)
    (tmp_path / f"{name}.json").write_text(json.dumps(board))
    return tmp_path


def test_the_board_s_ble_init_time_is_charged_and_reported(tmp_path: Path) -> None:
    """ble_init_ms from the board file (it was dropped: only *_ua/*_ma extras were kept)."""
    boards = _board_dir(tmp_path, "slow-ble", ble_init_ms={"value": 0.12, "unit": "s", "source": "test"})
    sc = {"sim": {"name": "ble-init", "seed": 3, "board": "slow-ble"}, "gateways": [{"id": "gw"}],
          "nodes": [{"kind": "water", "count": 1}]}
    sim = Simulation(sc, firmware=_fake_firmware(), boards_dir=boards)
    node = sim.nodes[0]
    assert node.profile.ble_init_ms == pytest.approx(120.0)
    t_boot = sim.engine.next_time()
    assert t_boot is not None
    sim.engine.run_until(t_boot)
    cpu_s = sim.firmware_cpu_s + 0.010 + 0.120 + 0.350
    assert node.meter.uc["cpu"] == pytest.approx(node.profile.active_ua * cpu_s, rel=1e-9)
    summary = sim.summary()
    assert summary["assumptions"]["ble_init_ms"] == {"slow-ble": pytest.approx(120.0)}
    assert Simulation(SCENARIO).summary()["assumptions"]["ble_init_ms"] == {"no-such-board": 200.0}


def _serial_firmware() -> types.ModuleType:
    us_cobs = firmware_module("us_cobs")
    us_proto = firmware_module("us_proto")

    fw = types.ModuleType("fake_serial_node")

    def run_cycle(hal: Any) -> int:
        cfg = json.loads(hal.open("config.json").read())
        keys = us_proto.Keys(bytes.fromhex(cfg["key"]))
        frame = us_proto.encode_uplink(keys, cfg["node_id"], 0, us_proto.T_REPORT, {us_proto.Q_VOLUME_L: 5}, 64)
        hal.time.sleep_ms(10)
        uart = hal.machine.UART(1, baudrate=9600)
        uart.write(us_cobs.wrap(frame))
        while not uart.any():  # like us_serial: poll for the ack every 5 ms
            hal.time.sleep_ms(5)
        uart.read()
        hal.energy("cpu")
        hal.time.sleep_ms(7)
        return 60_000

    fw.run_cycle = run_cycle  # type: ignore[attr-defined]
    fw.wire_len = len(us_cobs.wrap(bytes(7 + 3 + 4)))  # type: ignore[attr-defined]  # header, {3: 5}, MIC
    return fw


@pytest.mark.parametrize("uart_ma", [None, 1.5])
def test_uart_time_is_charged_by_hand(tmp_path: Path, uart_ma: float | None) -> None:
    """Sending at 9600 baud, then one 5 ms poll until the (4 ms) ack: charged as "uart"."""
    power = {} if uart_ma is None else {"uart_ma": {"value": uart_ma, "unit": "mA", "source": "test"}}
    boards = _board_dir(tmp_path, "serial-board", **power)
    sc = {"sim": {"name": "uart", "seed": 3, "board": "serial-board"}, "gateways": [{"id": "gw"}],
          "nodes": [{"kind": "water", "count": 1, "transport": "serial", "gateway": "gw"}]}
    fw = _serial_firmware()
    sim = Simulation(sc, firmware=fw, boards_dir=boards)
    node = sim.nodes[0]
    t_boot = sim.engine.next_time()
    assert t_boot is not None
    sim.engine.run_until(t_boot)
    assert [f.acked for f in sim.frames] == [True]
    uart_s = fw.wire_len * 10 / 9600 + 0.005
    line_ua = 0.0 if uart_ma is None else uart_ma * 1000
    assert node.meter.uc["uart"] == pytest.approx((node.profile.active_ua + line_ua) * uart_s, rel=1e-9)
    assert node.meter.uc["cpu"] == pytest.approx(node.profile.active_ua * (sim.firmware_cpu_s + 0.017), rel=1e-9)
    assert node.profile.static_ua == pytest.approx(0.025 + 1.8)  # a line driver is not always on
