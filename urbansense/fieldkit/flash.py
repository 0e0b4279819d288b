"""``urbansense node flash``: MicroPython onto a board with esptool as a library.

The image is a local file pinned per board (boards/<board>.json "image": chip, MicroPython
version, file name, size, sha256, and the official download address the technician takes it
from): nothing is downloaded at flash time, and a file whose size or SHA-256 is not the pinned
one, or a chip that is not the board's, is refused with what was found.
Steps: detect the chip (esptool.cmds.detect_chip), read the MAC, load the stub and erase the
whole flash (the ESP32's ROM loader cannot erase all; without the stub the ROM erases the
sectors FLASH_BEGIN announces), write at the chip's offset (0x1000 on the ESP32, 0x0 on the
C3/S3: where their second-stage bootloader sits in MicroPython's combined image), verify by
MD5, hard reset.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from pathlib import Path
from typing import Any, Final

from urbansense.fieldkit._errors import FieldError
from urbansense.fieldkit.nodeconfig import ROOT

IMAGES_DIR: Final = ROOT / "firmware" / "images"
OFFSETS: Final = {"ESP32": 0x1000, "ESP32-C3": 0x0, "ESP32-S3": 0x0}


def pinned_image(board: dict[str, Any]) -> dict[str, Any]:
    pin = board.get("image")
    if not isinstance(pin, dict) or not pin.get("file"):
        raise FieldError(f"board {board.get('name')} pins no MicroPython image",
                         "add an \"image\" entry (chip, micropython, file, sha256) to its boards/ file",
                         exit_code=2)
    return pin


def check_image(board: dict[str, Any], image: Path | None) -> tuple[bytes, dict[str, Any]]:
    """-> (the image bytes, the pin) after the SHA-256 check."""
    pin = pinned_image(board)
    path = image if image is not None else IMAGES_DIR / str(pin["file"])
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FieldError(f"image {path} not found (nothing is downloaded at flash time)",
                         f"copy {pin['file']} (MicroPython {pin.get('micropython')}, from "
                         f"{pin.get('source', 'micropython.org')}) to {IMAGES_DIR} or pass --image FILE",
                         exit_code=2) from None
    found = hashlib.sha256(data).hexdigest()
    size = pin.get("size")
    if isinstance(size, int) and len(data) != size:
        raise FieldError(f"{path.name} has {len(data):,} bytes, the pinned {pin['file']} has {size:,} "
                         "(a cut download, or another file)",
                         f"download {pin.get('source', pin['file'])} again", exit_code=2)
    want = pin.get("sha256")
    if not want:
        raise FieldError(f"board {board.get('name')} pins no sha256 for {pin['file']} (found {found})",
                         "check the file against the hash micropython.org publishes, then record it "
                         "as image.sha256 in the board's file", exit_code=2)
    if found != want:
        raise FieldError(f"{path.name} has SHA-256 {found}, the board pins {want}",
                         f"use the pinned file {pin['file']} (MicroPython {pin.get('micropython')}, "
                         f"from {pin.get('source', 'micropython.org')})", exit_code=2)
    return data, pin


def flash(port: str, board: dict[str, Any], image: Path | None = None, *, use_stub: bool = True,
          connect_mode: str = "default-reset", quiet: bool = False) -> dict[str, Any]:
    data, pin = check_image(board, image)
    chip_want = str(pin.get("chip") or board.get("chip"))
    offset = OFFSETS.get(chip_want)
    if offset is None:
        raise FieldError(f"no flash offset known for chip {chip_want}",
                         f"use a board whose chip is one of {', '.join(OFFSETS)}", exit_code=2)
    if not os.path.exists(port):
        raise FieldError(f"no serial port {port}",
                         "check the cable, list ports with `ls /dev/ttyUSB* /dev/ttyACM*`, pass --port")
    from esptool import cmds
    from esptool.logger import log
    from esptool.util import FatalError

    if quiet:
        log.set_verbosity("silent")
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
            try:
                esp = cmds.detect_chip(port, connect_mode=connect_mode, connect_attempts=2)
            except (FatalError, OSError) as exc:
                raise FieldError(f"no ESP32 bootloader answers on {port}: {str(exc).splitlines()[0]}",
                                 "hold the board's BOOT button, press and release RESET, release BOOT, "
                                 "and run this again; close any program that holds the port") from None
            try:
                found = str(esp.CHIP_NAME)
                if found != chip_want:
                    raise FieldError(f"the board on {port} is an {found}, board {board.get('name')} is an {chip_want}",
                                     "pass the right --board, or connect the right board", exit_code=2)
                mac = ":".join(f"{b:02x}" for b in esp.read_mac())
                erased = False
                if use_stub:
                    esp = cmds.run_stub(esp)
                    cmds.erase_flash(esp)
                    erased = True
                cmds.attach_flash(esp)
                cmds.write_flash(esp, [(offset, data)], no_compress=not use_stub, flash_size="keep")
                cmds.verify_flash(esp, [(offset, data)])
                cmds.reset_chip(esp, "hard-reset")
            except FatalError as exc:
                raise FieldError(f"flashing failed: {str(exc).splitlines()[0]}",
                                 "check the cable and run the same command again (it starts over)") from None
            finally:
                with contextlib.suppress(Exception):
                    esp._port.close()
    finally:
        if quiet:
            log.set_verbosity("auto")
    return {"ok": True, "port": port, "chip": found, "mac": mac, "image": pin["file"],
            "micropython": pin.get("micropython"), "sha256": pin.get("sha256"), "offset": offset,
            "bytes": len(data), "erased_all": erased}
