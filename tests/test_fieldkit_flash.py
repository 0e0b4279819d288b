"""``urbansense node flash``: the real esptool against a pty speaking the ESP32 ROM loader's
SLIP protocol (tests/support/esprom.py); the written image is checked byte for byte."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.support.esprom import (
    FLASH_BEGIN,
    FLASH_DATA,
    READ_REG,
    SPI_ATTACH,
    SPI_FLASH_MD5,
    SYNC,
    FakeEsp32Rom,
)
from urbansense.cli import main
from urbansense.fieldkit import FieldError
from urbansense.fieldkit.flash import flash
from urbansense.fieldkit.nodeconfig import load_board

pytestmark = pytest.mark.timeout(90)


def _board(tmp_path: Path, chip: str = "ESP32", size: int = 150_000) -> tuple[dict[str, Any], Path, bytes]:
    image = os.urandom(size)
    path = tmp_path / "ESP32_GENERIC-test.bin"
    path.write_bytes(image)
    board = dict(load_board("city-wroom32e"), chip=chip)
    board["image"] = {"chip": chip, "micropython": "1.29.0", "file": path.name,
                      "sha256": hashlib.sha256(image).hexdigest()}
    return board, path, image


def test_the_pinned_image_is_written_at_0x1000_and_verified(tmp_path: Path) -> None:
    board, path, image = _board(tmp_path)
    with FakeEsp32Rom() as rom:
        res = flash(rom.port, board, path, use_stub=False, connect_mode="no-reset", quiet=True)
        assert rom.flash[0x1000:0x1000 + len(image)] == image
        assert rom.flash[:0x1000] == b"\xff" * 0x1000 and rom.flash[0x1000 + len(image)] == 0xFF
        for op in (SYNC, READ_REG, SPI_ATTACH, FLASH_BEGIN, FLASH_DATA, SPI_FLASH_MD5):
            assert rom.commands[op] >= 1, hex(op)
    assert res["chip"] == "ESP32" and res["mac"] == "24:6f:28:a1:b2:c3" and res["offset"] == 0x1000


def test_a_wrong_hash_is_refused_before_the_port_is_touched(tmp_path: Path) -> None:
    board, path, _ = _board(tmp_path)
    path.write_bytes(b"not the pinned image")
    with FakeEsp32Rom() as rom:
        with pytest.raises(FieldError) as ei:
            flash(rom.port, board, path, use_stub=False, connect_mode="no-reset", quiet=True)
        assert not rom.commands
    assert hashlib.sha256(b"not the pinned image").hexdigest() in ei.value.problem
    assert board["image"]["sha256"] in ei.value.problem and ei.value.exit_code == 2


def test_a_chip_that_is_not_the_boards_is_refused_naming_what_was_found(tmp_path: Path) -> None:
    board, path, _ = _board(tmp_path, chip="ESP32-C3")
    with FakeEsp32Rom() as rom:
        with pytest.raises(FieldError) as ei:
            flash(rom.port, board, path, use_stub=False, connect_mode="no-reset", quiet=True)
        assert rom.flash == b"\xff" * len(rom.flash)  # nothing written
    assert "is an ESP32" in ei.value.problem and "ESP32-C3" in ei.value.problem


def test_a_missing_image_or_pin_says_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    board, path, _ = _board(tmp_path)
    path.unlink()
    with pytest.raises(FieldError) as ei:
        flash("/dev/null", board, path, quiet=True)
    assert "nothing is downloaded" in ei.value.problem and "--image" in ei.value.next_step
    rc = main(["node", "flash", "--port", "/dev/null", "--board", "city-wroom32e",
               "--image", str(tmp_path / "x.bin"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 2 and not out["ok"]
    (tmp_path / "x.bin").write_bytes(b"image")
    rc = main(["node", "flash", "--port", "/dev/null", "--board", "city-wroom32e",
               "--image", str(tmp_path / "x.bin"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 2 and "pins no sha256" in out["error"]  # the repository's pin awaits its hash


def test_a_port_where_no_bootloader_answers(tmp_path: Path) -> None:
    board, path, _ = _board(tmp_path)
    master, slave = os.openpty()
    try:
        with pytest.raises(FieldError) as ei:
            flash(os.ttyname(slave), board, path, use_stub=False, connect_mode="no-reset", quiet=True)
        assert "no ESP32 bootloader answers" in ei.value.problem and "BOOT" in ei.value.next_step
    finally:
        os.close(master)
        os.close(slave)
