"""A serial node's UART pins, and the laptop refusing what the node would refuse (issue 12).

The firmware's rules run three ways: in a wake cycle (CPython, fake HAL), on the MicroPython
VM, and on the laptop through urbansense.fieldkit.nodeconfig, which imports the same file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from simulator.firmware_loader import firmware_module
from tests import fw_fakes as ff
from tests.support.mpvm import missing_reason, run_micropython
from urbansense.fieldkit import FieldError, nodeconfig

us_config = firmware_module("us_config")
us_node = firmware_module("us_node")

ROOT = Path(__file__).resolve().parents[1]
NO_PINS = dict(ff.BOARD, pins={k: v for k, v in ff.BOARD["pins"].items() if not k.startswith("uart_")})


def _cycle(kind: str, board: dict[str, Any], serial: dict[str, Any] | None,
           capsys: pytest.CaptureFixture[str]) -> tuple[ff.World, int, str]:
    w = ff.make_world(kind, transport="serial", extra={"serial": serial} if serial else None, board=board)
    ms = w.run_cycle(us_node)
    return w, ms, capsys.readouterr().out


def test_serial_tx_without_rx_is_a_config_error_naming_the_key(capsys: pytest.CaptureFixture[str]) -> None:
    """Once a KeyError at every wake; now SAFE MODE naming serial.rx, the key never printed."""
    _w, ms, out = _cycle("bin", ff.BOARD, {"tx": 17}, capsys)
    assert ms == us_node.SAFE_MODE_SLEEP_MS
    assert "SAFE MODE" in out and "serial.rx" in out and "KeyError" not in out
    assert ff.KEY_HEX not in out
    _w, ms, out = _cycle("bin", ff.BOARD, {"rx": 16}, capsys)
    assert ms == us_node.SAFE_MODE_SLEEP_MS and "serial.tx" in out


def test_an_esp32_serial_node_without_pins_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    w, ms, out = _cycle("bin", NO_PINS, None, capsys)
    assert ms == us_node.SAFE_MODE_SLEEP_MS
    assert "serial.tx and serial.rx must name the UART pins" in out and "flash" in out
    assert not hasattr(w, "uart_pins")  # the UART was never opened on the flash pins


@pytest.mark.parametrize("serial", [{"tx": 10, "rx": 16}, {"tx": 17, "rx": 9}])
def test_a_flash_pin_is_refused_on_an_esp32(serial: dict[str, int], capsys: pytest.CaptureFixture[str]) -> None:
    _w, ms, out = _cycle("bin", NO_PINS, serial, capsys)
    assert ms == us_node.SAFE_MODE_SLEEP_MS and "GPIO6..11" in out


def test_the_board_names_the_pins_when_the_config_does_not(capsys: pytest.CaptureFixture[str]) -> None:
    w, ms, out = _cycle("bin", ff.BOARD, None, capsys)
    assert ms != us_node.SAFE_MODE_SLEEP_MS, out
    assert w.uart_pins == (17, 16)


def test_config_pins_win_over_the_board_pins(capsys: pytest.CaptureFixture[str]) -> None:
    w, ms, _out = _cycle("bin", ff.BOARD, {"tx": 14, "rx": 13}, capsys)
    assert ms != us_node.SAFE_MODE_SLEEP_MS and w.uart_pins == (14, 13)


def test_a_c3_serial_node_may_use_its_default_pins(capsys: pytest.CaptureFixture[str]) -> None:
    """Only the original ESP32's UART(1) defaults are the flash."""
    w = ff.make_world("water", transport="serial", board=ff.BOARD_C3)
    assert w.run_cycle(us_node) != us_node.SAFE_MODE_SLEEP_MS
    assert w.uart_pins == (None, None)


def test_every_esp32_board_in_the_repository_names_its_uart_pins() -> None:
    for path in sorted((ROOT / "boards").glob("*.json")):
        board = json.loads(path.read_text())
        cfg = us_config.parse(ff.config_text("water", transport="serial"))
        us_config.check_board(cfg, board)
        if board["chip"] == "ESP32":
            assert cfg["serial"]["tx"] not in us_config.FLASH_GPIOS, path.name


def test_board_sources_cite_primary_sources_never_local_paths() -> None:
    for path in sorted((ROOT / "boards").glob("*.json")):
        text = path.read_text()
        assert "/work/" not in text and "FIELD-FACTS" not in text, path.name
        for name, fig in json.loads(text).get("power", {}).items():
            assert fig.get("source"), f"{path.name}: power.{name} has no source"


# --- the laptop: the same code, not a copy ---

def test_the_laptop_check_is_the_firmware_file() -> None:
    mod = nodeconfig.firmware_module("us_config")
    assert Path(mod.__file__ or "").resolve() == ROOT / "firmware" / "lib" / "us_config.py"


@pytest.mark.parametrize(("transport", "extra", "needle"), [
    ("serial", {"serial": {"tx": 17}}, "serial.rx"),
    ("ble", {"intervals": {"report_interval_s": 0}}, "intervals.report_interval_s"),
    ("ble", {"thresholds": {"mag_release_ut": 40}}, "mag_release_ut"),  # the kind's own check
])
def test_provisioning_refuses_what_the_node_would_put_into_safe_mode(
        transport: str, extra: dict[str, Any], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    board = nodeconfig.load_board("city-wroom32e")
    with pytest.raises(FieldError) as ei:
        nodeconfig.make_config(7, bytes(16), "parking", board, transport, extra)
    assert needle in ei.value.problem and "SAFE MODE" in ei.value.next_step
    assert ei.value.exit_code == 2
    # ... and the node, given that config and board, does go into safe mode.
    cfg = {"node_id": 7, "key": ff.KEY_HEX, "kind": "parking", "board": "city-wroom32e",
           "transport": transport, **extra}
    w = ff.make_world("parking", board=board)
    w.files["config.json"] = json.dumps(cfg)
    assert w.run_cycle(us_node) == us_node.SAFE_MODE_SLEEP_MS
    assert needle in capsys.readouterr().out


def test_provisioning_accepts_a_serial_node_on_the_city_board() -> None:
    board = nodeconfig.load_board("city-wroom32e")
    cfg = nodeconfig.make_config(7, bytes(16), "water", board, "serial")
    assert cfg["transport"] == "serial" and "tx" not in cfg.get("serial", {})  # the board's pins


def test_an_unknown_board_names_the_known_ones() -> None:
    with pytest.raises(FieldError) as ei:
        nodeconfig.load_board("city-wroom99")
    assert "city-wroom32e" in ei.value.next_step


@pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))
@pytest.mark.timeout(60)
def test_the_serial_pin_rules_run_on_the_micropython_vm() -> None:
    script = r"""
import sys, json
import us_config
def msg(text, board):
    try:
        cfg = us_config.parse(text)
        us_config.check_board(cfg, board)
        return "ok " + str(cfg["serial"].get("tx")) + " " + str(cfg["serial"].get("rx"))
    except us_config.ConfigError as e:
        return str(e)
base = {"node_id": 1, "key": "00" * 16, "kind": "bin", "board": "b", "transport": "serial"}
esp = {"chip": "ESP32", "pins": {"uart_tx": 17, "uart_rx": 16}}
bare = {"chip": "ESP32", "pins": {}}
print(msg(json.dumps(dict(base, serial={"tx": 4})), esp))
print(msg(json.dumps(base), bare))
print(msg(json.dumps(base), esp))
"""
    proc = run_micropython(script, mounts={str(ROOT / "firmware" / "lib"): "/lib"}, timeout_s=50)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert "serial.rx must be set" in lines[0]
    assert "must name the UART pins" in lines[1]
    assert lines[2] == "ok 17 16"
