"""A node booted from a provisioned board's flash: ``flash = "DIR"`` in a scenario's
``[[nodes]]`` (DIR: the board's files as ``urbansense node provision`` wrote them).

The node boots the board's own files: its config.json (id, key, kind and settings as
provisioning wrote them) and board.json, byte for byte. Its code is the simulator's firmware
(firmware/lib and main.py, run on CPython with the simulated HAL): the board holds that code
compiled by mpy-cross (.mpy bytecode), which CPython cannot execute. So the files are taken
only when the code on the board is this code: every ``lib/*.mpy`` byte for byte what
mpy-cross makes of firmware/lib for the board's chip (mpy-cross is deterministic), no other
firmware module beside them, and boot.py and main.py the tree's. The node then runs exactly
the code the board holds, in source form; a board with other firmware, or whose firmware is
frozen in its image (nothing here can read an image), is refused with a ValueError that
names what differs. (The copied .mpy files themselves run on the MicroPython VM in
tests/test_fieldkit_provision.py.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulator.firmware_loader import FIRMWARE_LIB


@dataclass(frozen=True)
class BoardFlash:
    path: Path
    config_json: bytes
    board_json: bytes
    config: dict[str, Any]
    board: dict[str, Any]

    @property
    def node_id(self) -> int:
        return int(self.config["node_id"])

    @property
    def key(self) -> bytes:
        return bytes.fromhex(str(self.config["key"]))


def load(path: Path) -> BoardFlash:
    """The board's config.json and board.json (ValueError if either is missing or not JSON)."""
    try:
        cfg_bytes = (path / "config.json").read_bytes()
        board_bytes = (path / "board.json").read_bytes()
        cfg, board = json.loads(cfg_bytes), json.loads(board_bytes)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is no provisioned board's flash: {exc}") from None
    if not isinstance(cfg, dict) or not isinstance(board, dict) or "node_id" not in cfg or "name" not in board:
        raise ValueError(f"{path}: config.json or board.json is not a node's")
    return BoardFlash(path, cfg_bytes, board_bytes, cfg, board)


def check_firmware(flash: BoardFlash, lib: Path = FIRMWARE_LIB) -> None:
    """ValueError unless the code on the board is the simulator's firmware (module docstring)."""
    from urbansense.fieldkit.build import compile_lib  # mpy-cross, as provision runs it

    if lib.resolve() != FIRMWARE_LIB.resolve():
        raise ValueError(f"{flash.path}: a board can only be checked against {FIRMWARE_LIB}")
    want = compile_lib(str(flash.board.get("chip", "ESP32")))
    lib_dir = flash.path / "lib"
    have = {f"lib/{p.name}": p.read_bytes() for p in sorted(lib_dir.glob("us_*"))} if lib_dir.is_dir() else {}
    if not have:
        raise ValueError(f"{flash.path}: no firmware modules in lib/ (frozen in the board's image?): "
                         "the simulator cannot tell which firmware that image holds")
    for name in sorted(set(want) | set(have)):
        if have.get(name) != want.get(name):
            what = "missing" if name not in have else "not on this tree's list" if name not in want else "different"
            raise ValueError(f"{flash.path}: {name} is {what}: the board's firmware is not this tree's")
    for name in ("boot.py", "main.py"):
        on_board = flash.path / name
        if not on_board.is_file() or on_board.read_bytes() != (lib.parent / name).read_bytes():
            raise ValueError(f"{flash.path}: {name} is missing or not this tree's")
