"""``urbansense node doctor`` against a virtual board with simulated parts attached
(tests/support/vboard_rom.py: the register-level fakes of tests/fw_fakes.py behind the port's
``machine``/``esp32`` modules): the I2C scan, the live sensor reading, the battery voltage,
the wake pins and the parking empty-space calibration run the board-side code for real."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mpremote.transport_serial import SerialTransport

from simulator.firmware_loader import firmware_module
from tests import fw_fakes as ff
from tests.support.mpvm import missing_reason
from tests.support.vboard import VirtualBoard
from tests.support.vboard_rom import Hardware, make_rom, nvs
from urbansense.cli import main
from urbansense.fieldkit.nodeconfig import load_board
from urbansense.fieldkit.provision import Request, provision

pytestmark = [pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason())),
              pytest.mark.timeout(120)]

FIELD_NT = (21000, -4000, 43000)
BOARD = load_board("city-wroom32e")
PINS = BOARD["pins"]


def _doctor(port: str, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, Any]:
    rc = main(["node", "doctor", "--port", port, "--json", *extra])
    return rc, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@contextlib.contextmanager
def _board(tmp_path: Path, kind: str, hw: Hardware) -> Iterator[VirtualBoard]:
    """A provisioned city board with these parts attached."""
    with VirtualBoard(tmp_path / "flash", rom_dir=make_rom(tmp_path / "rom", hardware=hw)) as vb:
        provision(Request(vb.port, kind, "city-wroom32e", "s", tmp_path / "r.jsonl"))
        yield vb


def test_the_hardware_checks_run_on_a_parking_board(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The magnetometer answers only behind the load switch: the doctor switches it on, scans,
    reads the field with the firmware's driver, and reads the battery through the divider."""
    hw = Hardware(BOARD, lis3mdl_nt=FIELD_NT, adc_uv={PINS["battery_adc"]: 1_820_000})
    make_rom(tmp_path / "rom", hardware=hw)
    # The node's NVS as a node that ran leaves it: its frame-counter reservation (us_store).
    (tmp_path / "rom" / "nvs.json").write_text(json.dumps({"urbansense": {"fcnt_res": ["i", 512]}}))
    with _board(tmp_path, "parking", hw) as vb:
        rc, res = _doctor(vb.port, capsys)
    assert rc == 0 and res["ok"] and res["problems"] == [], res
    h = res["hardware"]
    assert h["i2c"] == [0x1C]
    assert all(abs(a - b) <= 20 for a, b in zip(h["field_nt"], FIELD_NT, strict=True)), h["field_nt"]
    assert h["battery_mv"] == 3640  # 1.82 V through 1 MOhm / 1 MOhm
    assert h["wake_pins"] == {"4": 0, "25": 0, "26": 0}
    assert h["nvs"] == "ok" and h["nvs_fcnt_reserved"] == 512 and "hardware" not in h
    assert h["rtc_memory_bytes"] == 0 and h["rtc_state"] == "empty"


def test_a_missing_sensor_a_low_battery_and_a_stuck_wake_pin_are_named(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hw = Hardware(BOARD, adc_uv={PINS["battery_adc"]: 1_500_000}, pins={PINS["mag_int"]: 1})
    with _board(tmp_path, "parking", hw) as vb:
        rc, res = _doctor(vb.port, capsys)
    assert rc == 1 and not res["ok"]
    text = "\n".join(res["problems"])
    assert "I2C: no answer from 0x1c" in text
    assert "battery at 3000 mV" in text
    assert "wake pin 4 (mag_int) is already at its wake level 1" in text


def test_a_bin_board_reads_its_distance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hw = Hardware(BOARD, vl53l1x_mm=[812] * 6, adc_uv={PINS["battery_adc"]: 1_800_000})
    with _board(tmp_path, "bin", hw) as vb:
        rc, res = _doctor(vb.port, capsys)
    assert rc == 0 and res["hardware"]["i2c"] == [0x29] and res["hardware"]["distance_mm"] == [812, 812, 812]


def test_calibrate_empty_stores_the_baseline_the_firmware_then_uses(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rom = tmp_path / "rom"
    hw = Hardware(BOARD, lis3mdl_nt=FIELD_NT, adc_uv={PINS["battery_adc"]: 1_800_000})
    with _board(tmp_path, "parking", hw) as vb:
        rc, res = _doctor(vb.port, capsys)
        assert rc == 0 and "baseline_nt" not in res["hardware"] and nvs(rom) == {}  # a plain doctor writes nothing
        rc, res = _doctor(vb.port, capsys, "--calibrate-empty")
    assert rc == 0 and res["ok"], (res["problems"], res["hardware"])
    base = res["hardware"]["baseline_nt"]
    assert all(abs(a - b) <= 20 for a, b in zip(base, FIELD_NT, strict=True))
    stored = nvs(rom)["urbansense"]["mag_base"]
    assert list(firmware_module("us_cbor").decode(stored)) == base
    # The node's next cold boot (the firmware on CPython, that NVS) takes it, measures no new
    # install baseline, and sees a car against it.
    w = ff.make_world("parking", board=BOARD)
    w.nvs = {"urbansense": {"mag_base": stored}}
    w.i2c_devices[0x1C].set_field([FIELD_NT[0], FIELD_NT[1], FIELD_NT[2] + 40000])
    w.run_cycle(firmware_module("us_node"))
    st = firmware_module("us_store").load_rtc(w.hal().machine.RTC())
    assert st["k"]["b"] == base


def test_calibrate_empty_is_refused_on_other_kinds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hw = Hardware(BOARD, vl53l1x_mm=[500], adc_uv={PINS["battery_adc"]: 1_800_000})
    with _board(tmp_path, "bin", hw) as vb:
        rc, res = _doctor(vb.port, capsys, "--calibrate-empty")
    assert rc == 2 and "parking sensor's step" in res["error"]
    assert nvs(tmp_path / "rom") == {}


def test_a_damaged_board_file_is_named_not_a_crash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hw = Hardware(BOARD, lis3mdl_nt=FIELD_NT, adc_uv={PINS["battery_adc"]: 1_800_000})
    with _board(tmp_path, "parking", hw) as vb:
        t = SerialTransport(vb.port)
        t.enter_raw_repl(soft_reset=False)
        t.fs_writefile("board.json", b"{ cut short")  # as a pulled cable can leave it
        t.exit_raw_repl()
        t.close()
        rc, res = _doctor(vb.port, capsys)
    assert rc == 1 and "board.json is damaged" in res["error"] and "provision the board again" in res["next"]
