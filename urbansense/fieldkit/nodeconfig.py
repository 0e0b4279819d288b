"""config.json for a node, checked on the laptop by the firmware's own code.

The firmware's checks (firmware/lib/us_config.py, the kind's ``check_config``) are imported
from the firmware tree itself, not copied: a config the node would answer with SAFE MODE is
refused at provisioning with the same message the node would print. The firmware modules are
plain Python that CPython runs (the simulator runs them too); they are imported under their
board names (``us_config``, ``us_parking``...) from ``firmware/lib`` as on the board.
"""

from __future__ import annotations

import contextlib
import copy
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, Final

from simulator.firmware_loader import firmware_module as _load
from urbansense.fieldkit._errors import FieldError

ROOT: Final = Path(__file__).resolve().parents[2]
FIRMWARE_DIR: Final = ROOT / "firmware"
FIRMWARE_LIB: Final = FIRMWARE_DIR / "lib"
BOARDS_DIR: Final = ROOT / "boards"


def firmware_module(name: str) -> ModuleType:
    """-> the firmware module ``name`` (e.g. "us_config") from firmware/lib, through the one
    loader every in-process firmware import uses (simulator/firmware_loader.py)."""
    return _load(name, FIRMWARE_LIB)


@contextlib.contextmanager
def _borrowed_firmware() -> Iterator[None]:
    """Firmware modules loaded for one check leave again (sys.modules and sys.path as before):
    the laptop check must not decide which firmware a later in-process user (the simulator, a
    test with its own firmware directory) gets under the board's module names."""
    names = {p.stem for p in FIRMWARE_LIB.glob("*.py")}
    before = set(sys.modules)
    path = list(sys.path)
    try:
        yield
    finally:
        for name in set(sys.modules) - before:
            if name in names:
                del sys.modules[name]
        sys.path[:] = path


def load_board(name: str) -> dict[str, Any]:
    path = BOARDS_DIR / f"{name}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in BOARDS_DIR.glob("*.json")))
        raise FieldError(f"unknown board {name!r}", f"use one of: {known}", exit_code=2)
    board: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return board


def board_json_for_node(board: dict[str, Any]) -> bytes:
    """board.json as it goes on the node (the firmware reads only some keys; all are kept so
    the file on the board names its sources like the one in the repository)."""
    return (json.dumps(board, indent=1, ensure_ascii=True) + "\n").encode()


def check(cfg: dict[str, Any], board: dict[str, Any]) -> None:
    """Raise FieldError if the node would enter safe mode with this config and board: the
    same checks, in the same order, as us_node.run_cycle at a boot."""
    with _borrowed_firmware():
        _check(cfg, board)


def _check(cfg: dict[str, Any], board: dict[str, Any]) -> None:
    us_config = firmware_module("us_config")
    text = json.dumps(cfg)
    try:
        parsed = us_config.parse(text)
        us_config.check_board(parsed, copy.deepcopy(board))
        kind = firmware_module("us_" + parsed["kind"])
        kind_check = getattr(kind, "check_config", None)
        if kind_check is not None:
            kind_check(parsed)
    except us_config.ConfigError as exc:
        raise FieldError(f"config refused: {exc}",
                         "fix that setting (the node would sleep in SAFE MODE with it)",
                         exit_code=2) from None


def make_config(node_id: int, key: bytes, kind: str, board: dict[str, Any],
                transport: str = "ble", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """-> a config.json object for a new node, checked (FieldError if the node would refuse it)."""
    cfg: dict[str, Any] = {"node_id": node_id, "key": key.hex(), "kind": kind,
                           "board": str(board.get("name", "")), "transport": transport}
    for section, value in (extra or {}).items():
        cfg[section] = value
    check(cfg, board)
    return cfg
