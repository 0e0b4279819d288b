"""config.json/board.json are checked at every boot that is not a deep-sleep wake; a wake from
deep sleep runs on the checked copy in RTC memory (docs/FIRMWARE.md, Persistence)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from simulator.firmware_loader import firmware_module
from tests import fw_fakes as ff

us_node = firmware_module("us_node")
us_store = firmware_module("us_store")


FW_LIB = Path(__file__).resolve().parents[1] / "firmware" / "lib"


def _open_counting(w: ff.World) -> list[str]:
    opened: list[str] = []
    hal = w.hal
    real_open = ff.FakeHAL.open

    def make() -> ff.FakeHAL:
        h = hal()

        def open_(path: str, mode: str = "r") -> object:
            opened.append(path)
            return real_open(h, path, mode)

        h.open = open_  # type: ignore[method-assign]
        return h

    w.hal = make  # type: ignore[method-assign]
    return opened


def test_board_keys_cover_every_board_key_the_firmware_reads() -> None:
    """A key missing from BOARD_KEYS would read as its default on every deep-sleep wake."""
    used: set[str] = set()
    for path in FW_LIB.glob("*.py"):
        used |= set(re.findall(r"board\.get\(\"(\w+)\"", path.read_text()))
        used |= set(re.findall(r"board\[\"(\w+)\"\]", path.read_text()))
    assert used and used <= set(us_node.BOARD_KEYS)


@pytest.mark.parametrize("kind", ["parking", "bin", "water"])
def test_deep_sleep_wake_reads_no_file_and_stays_within_the_rtc_budget(kind: str,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    w = ff.make_world(kind)
    opened = _open_counting(w)
    w.sleep(w.run_cycle(us_node))
    assert sorted(opened) == ["board.json", "config.json"]
    for _ in range(3):
        opened.clear()
        ms = w.run_cycle(us_node)
        assert opened == []
        w.sleep(ms)
    assert "SAFE MODE" not in capsys.readouterr().out
    assert len(w.rtc_mem) <= us_store.RTC_CACHE_MAX_BYTES
    st = us_store.load_rtc(w.hal().machine.RTC())
    cfg, board = us_store.load_config(st)
    assert cfg["key_bytes"] == bytes.fromhex(ff.KEY_HEX) and cfg["kind"] == kind
    assert board["pins"] == ff.BOARD["pins"] and "name" not in board


def test_reset_after_provisioning_picks_up_the_new_config() -> None:
    w = ff.make_world("water")
    w.sleep(w.run_cycle(us_node))
    w.files["config.json"] = ff.config_text("water", extra={"intervals": {"report_interval_s": 60}})
    w.sleep(w.run_cycle(us_node))
    cfg, _ = us_store.load_config(us_store.load_rtc(w.hal().machine.RTC()))
    assert "report_interval_s" not in cfg["intervals"]  # deep-sleep wake: the checked copy
    w.reset_cause = ff.SOFT_RESET  # mpremote resets the board after copying files
    w.run_cycle(us_node)
    cfg, _ = us_store.load_config(us_store.load_rtc(w.hal().machine.RTC()))
    assert cfg["intervals"]["report_interval_s"] == 60


def test_bad_config_after_reset_stays_in_safe_mode_on_deep_sleep_wakes(capsys: pytest.CaptureFixture[str]) -> None:
    w = ff.make_world("bin")
    w.sleep(w.run_cycle(us_node))
    w.files["config.json"] = ff.config_text("bin", extra={"thresholds": {"pings": 99}})
    w.reset_cause = ff.HARD_RESET
    assert w.run_cycle(us_node) == us_node.SAFE_MODE_SLEEP_MS
    w.sleep(us_node.SAFE_MODE_SLEEP_MS)
    assert w.run_cycle(us_node) == us_node.SAFE_MODE_SLEEP_MS  # not the old cached config
    assert capsys.readouterr().out.count("thresholds.pings") == 2
    assert us_store.load_config(us_store.load_rtc(w.hal().machine.RTC())) is None


def test_torn_cache_falls_back_to_the_files(capsys: pytest.CaptureFixture[str]) -> None:
    w = ff.make_world("parking")
    w.sleep(w.run_cycle(us_node))
    raw = bytearray(w.rtc_mem)
    raw[-2] ^= 0x55  # inside the cached config's JSON: its CRC no longer matches
    w.rtc_mem = bytes(raw)
    opened = _open_counting(w)
    w.run_cycle(us_node)
    assert sorted(opened) == ["board.json", "config.json"]
    assert "SAFE MODE" not in capsys.readouterr().out


def test_serial_node_with_a_full_backlog_keeps_its_backlog_not_the_cache() -> None:
    w = ff.make_world("bin", transport="serial")
    for _ in range(40):  # no gateway answers: the backlog fills up
        w.sleep(w.run_cycle(us_node))
    st = us_store.load_rtc(w.hal().machine.RTC())
    assert len(st["bl"]) == 8
    assert len(w.rtc_mem) <= us_store.RTC_MAX_BYTES
    if len(w.rtc_mem) > us_store.RTC_CACHE_MAX_BYTES:
        assert us_store.load_config(st) is None
    assert w.run_cycle(us_node) != us_node.SAFE_MODE_SLEEP_MS
