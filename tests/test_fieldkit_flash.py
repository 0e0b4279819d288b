"""``urbansense node flash``: the real esptool against a pty speaking the ESP32 ROM loader's
SLIP protocol (tests/support/esprom.py); the written image is checked byte for byte."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.support.esprom import (
    ERASE_FLASH,
    FLASH_BEGIN,
    FLASH_DATA,
    FLASH_DEFL_DATA,
    MEM_END,
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


def test_the_default_path_runs_the_stub_erases_everything_and_writes_compressed(tmp_path: Path) -> None:
    """What `urbansense node flash` does by default: esptool's stub, a whole-chip erase (an
    old filesystem must not survive), compressed blocks, the MD5 check."""
    board, path, _ = _board(tmp_path)
    image = os.urandom(20_000) + bytes(range(256)) * 500  # compressible, as a real image is
    path.write_bytes(image)
    board["image"]["sha256"] = hashlib.sha256(image).hexdigest()
    with FakeEsp32Rom() as rom:
        rom.flash[0x200000:0x200010] = b"old filesystem!!"
        res = flash(rom.port, board, path, connect_mode="no-reset", quiet=True)
        assert rom.stub and rom.commands[MEM_END] == 1 and rom.commands[ERASE_FLASH] == 1
        assert rom.commands[FLASH_DEFL_DATA] >= 1 and rom.commands[FLASH_DATA] == 0
        assert rom.commands[SPI_FLASH_MD5] >= 1
        assert rom.flash[0x1000:0x1000 + len(image)] == image
        assert rom.flash[0x200000:0x200010] == b"\xff" * 16 and rom.flash[:0x1000] == b"\xff" * 0x1000
    assert res["erased_all"] and res["bytes"] == len(image) and res["mac"] == "24:6f:28:a1:b2:c3"


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
    # The repository's pin: a file of another size is named as a cut download.
    (tmp_path / "x.bin").write_bytes(b"image")
    rc = main(["node", "flash", "--port", "/dev/null", "--board", "city-wroom32e",
               "--image", str(tmp_path / "x.bin"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 2 and "has 5 bytes, the pinned ESP32_GENERIC-20250415-v1.25.0.bin has 1,702,240" in out["error"]
    assert "micropython.org/resources/firmware/ESP32_GENERIC-20250415-v1.25.0.bin" in out["next"]
    # A board whose pin has no hash yet (the C3's) refuses any file.
    rc = main(["node", "flash", "--port", "/dev/null", "--board", "esp32c3-devkitm-1",
               "--image", str(tmp_path / "x.bin"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 2 and "pins no sha256" in out["error"]


def test_flash_never_downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    """With every way to the network refusing and recording: a missing image is an error that
    names the file to copy, and a present one is flashed whole; no connection is attempted."""
    tried: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        tried.append(args)
        raise OSError("the test allows no network")
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    rc = main(["node", "flash", "--port", "/dev/null", "--board", "city-wroom32e",
               "--image", str(tmp_path / "missing.bin"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert tried == []
    assert rc == 2 and "nothing is downloaded" in out["error"]
    board, path, image = _board(tmp_path)
    with FakeEsp32Rom() as rom:
        flash(rom.port, board, path, use_stub=False, connect_mode="no-reset", quiet=True)
        assert rom.flash[0x1000:0x1000 + len(image)] == image
    assert tried == []


def test_a_file_of_the_pinned_size_with_other_bytes_is_refused_by_its_hash(tmp_path: Path) -> None:
    board, path, image = _board(tmp_path)
    board["image"]["size"] = len(image)
    path.write_bytes(bytes(len(image)))
    with pytest.raises(FieldError) as ei:
        flash("/dev/null", board, path, quiet=True)
    assert hashlib.sha256(bytes(len(image))).hexdigest() in ei.value.problem and ei.value.exit_code == 2


@pytest.mark.parametrize("name", ["city-wroom32e", "esp32-devkitc"])
def test_the_esp32_boards_pin_one_checked_official_image(name: str) -> None:
    """chip, version, file, size, sha256 and the official address agree with each other."""
    pin = load_board(name)["image"]
    assert pin["chip"] == "ESP32" and pin["micropython"] == "1.25.0"
    assert pin["file"] == "ESP32_GENERIC-20250415-v1.25.0.bin" and pin["size"] == 1_702_240
    assert pin["sha256"] == "1eb1a88473e32aa6a4d45dc1b5b6ad40bc1f06128e7aa8548e438cfa4633da1b"
    assert pin["source"] == "https://micropython.org/resources/firmware/" + pin["file"]
    assert f"v{pin['micropython']}" in pin["file"]


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


def test_a_write_that_fails_midway_says_to_run_again(tmp_path: Path) -> None:
    board, path, image = _board(tmp_path)
    with FakeEsp32Rom(fail_data_after=3) as rom:
        with pytest.raises(FieldError) as ei:
            flash(rom.port, board, path, use_stub=False, connect_mode="no-reset", quiet=True)
        assert rom.commands[FLASH_DATA] >= 4 and rom.flash[0x1000:0x1000 + len(image)] != image
    assert ei.value.problem.startswith("flashing failed: ") and "run the same command again" in ei.value.next_step
