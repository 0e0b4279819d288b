"""BlueZ's passive scan parameters, read (never written) from its main.conf.

BlueZ scans passively only through an advertisement monitor, with ``[LE]``
``ScanIntervalAdvMonitor`` / ``ScanWindowAdvMonitor``; a window shorter than the interval
leaves the radio deaf between windows and adverts are lost. The BLE transport reads them at
start to warn about that (deploy/bluetooth-main.conf sets them equal). The file is read as
bluetoothd reads it: integers by strtol base 0, and a key that is absent, empty, not an
integer or out of range left to the kernel's default.
"""

from __future__ import annotations

import configparser
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

BLUEZ_MAIN_CONF: Final = Path("/etc/bluetooth/main.conf")

# Linux's advertisement-monitor scan parameters when main.conf sets none (0.625 ms units).
_KERNEL_INTERVAL: Final = 0x0060
_KERNEL_WINDOW: Final = 0x0030
_SCAN_PARAM_MIN: Final = 0x0004
_SCAN_PARAM_MAX: Final = 0x4000
_STRTOL0_RE: Final = re.compile(r"[+-]?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")


@dataclass(frozen=True, slots=True)
class ScanParams:
    """BlueZ's passive scan parameters for advertisement monitors, in 0.625 ms units.

    ``None`` when they cannot be known; ``note`` says why, or which value is the kernel's.
    """

    interval: int | None
    window: int | None
    note: str = ""

    @property
    def window_equals_interval(self) -> int:
        """1 or 0; -1 when unknown (the gauge's value)."""
        if self.interval is None or self.window is None:
            return -1
        return int(self.interval == self.window)


def _strtol0(text: str) -> int | None:
    """The whole string as bluetoothd reads it: strtol(base 0), so 0x.. hex and 0.. octal."""
    s = text.strip()
    if not _STRTOL0_RE.fullmatch(s):
        return None
    sign = -1 if s[0] == "-" else 1
    digits = s.lstrip("+-")
    if digits[:2] in ("0x", "0X"):
        return sign * int(digits[2:], 16)
    if len(digits) > 1 and digits[0] == "0":
        return sign * int(digits[1:], 8)
    return sign * int(digits)


def parse_scan_params(text: str) -> ScanParams:
    """``[LE] ScanIntervalAdvMonitor`` / ``ScanWindowAdvMonitor`` from main.conf text.

    A key that is absent, empty, not an integer or outside 0x0004..0x4000 is ignored by
    bluetoothd, so the kernel's default applies to it.
    """
    parser = configparser.ConfigParser(interpolation=None, strict=False, delimiters=("=",),
                                       comment_prefixes=("#",), inline_comment_prefixes=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    try:
        parser.read_string(text)
    except configparser.Error as exc:
        return ScanParams(None, None, f"unparsable: {str(exc).splitlines()[0]}")
    notes: list[str] = []

    def key(name: str, default: int) -> int:
        raw = parser.get("LE", name, fallback=None)
        value = None if raw is None else _strtol0(raw)
        if value is None or not _SCAN_PARAM_MIN <= value <= _SCAN_PARAM_MAX:
            why = "unset" if raw is None or not raw.strip() else f"{raw.strip()!r} ignored"
            notes.append(f"{name} {why}, kernel default 0x{default:04x}")
            return default
        return value

    interval = key("ScanIntervalAdvMonitor", _KERNEL_INTERVAL)
    window = key("ScanWindowAdvMonitor", _KERNEL_WINDOW)
    return ScanParams(interval, window, "; ".join(notes))


def read_scan_params(path: Path) -> ScanParams:
    """Read-only look at BlueZ's main.conf; a missing file means the kernel's defaults."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    except (OSError, UnicodeDecodeError) as exc:
        return ScanParams(None, None, f"unreadable: {exc}")
    return parse_scan_params(text)
