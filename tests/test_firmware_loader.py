"""Every in-process firmware import goes through simulator.firmware_loader, so the AES backend
a test exercises does not depend on which test ran before it in the same process."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from simulator.firmware_loader import FIRMWARE_LIB, firmware_module

ROOT = Path(__file__).resolve().parents[1]
LOADER = ROOT / "simulator" / "firmware_loader.py"
FIRMWARE_NAMES = {p.stem for p in FIRMWARE_LIB.glob("*.py")}
# In-process code; scripts run on the MicroPython VM are strings, not imports, here.
TREES = ("bench", "gateway", "simulator", "tests", "tools", "urbansense")


def _python_files() -> list[Path]:
    return [p for tree in TREES for p in sorted((ROOT / tree).rglob("*.py"))]


def _bypasses(path: Path, root: Path = ROOT) -> list[str]:
    """Firmware imported, or firmware/lib put on sys.path, other than by the loader."""
    src = path.read_text()
    out: list[str] = []
    for node in ast.walk(ast.parse(src)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        out += [f"{path.relative_to(root)}:{node.lineno}: import {n}"
                for n in names if n.split(".")[0] in FIRMWARE_NAMES]
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("insert", "append")
                and ast.unparse(node.func.value) == "sys.path"
                and "firmware" in (ast.get_source_segment(src, node) or "")):
            out.append(f"{path.relative_to(root)}:{node.lineno}: sys.path edit")
    return out


def test_no_in_process_code_imports_firmware_behind_the_loader() -> None:
    """A plain ``import us_proto`` after a sys.path edit is how the order dependence came in."""
    files = [p for p in _python_files() if p != LOADER]
    assert len(files) > 50 and FIRMWARE_NAMES >= {"us_crypto", "us_node", "us_proto"}
    found = [b for p in files for b in _bypasses(p)]
    assert found == []


def test_the_scan_finds_a_bypass(tmp_path: Path) -> None:
    """The scan above is not vacuous: both ways in are caught."""
    f = tmp_path / "x.py"
    f.write_text('import sys\nsys.path.insert(0, "firmware/lib")\nimport us_proto\nfrom us_cbor import decode\n')
    assert len(_bypasses(f, tmp_path)) == 3


def test_the_loader_gives_every_firmware_module_the_ports_aes() -> None:
    """us_crypto takes cryptolib's path (the ESP32's AES engine) whatever was imported first."""
    crypto = firmware_module("us_crypto")
    import cryptolib  # installed by the loader, as the port has it

    assert isinstance(crypto.aes_ecb(bytes(16)), cryptolib.aes)
    assert firmware_module("us_proto").derive_keys is crypto.derive_keys


@pytest.mark.timeout(60)
def test_firmware_imported_behind_the_loaders_back_is_refused() -> None:
    """Instead of reloading us_crypto (which once made the backend depend on test order)."""
    script = (
        "import sys\n"
        f"sys.path.insert(0, {str(FIRMWARE_LIB)!r})\n"
        "import us_crypto\n"
        "from simulator.firmware_loader import firmware_module\n"
        "try:\n"
        "    firmware_module('us_node')\n"
        "except RuntimeError as exc:\n"
        "    print('refused:', exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=50,
                         cwd=ROOT, check=True).stdout
    assert out.startswith("refused: us_crypto was imported before")


def test_a_missing_firmware_module_is_named() -> None:
    with pytest.raises(ImportError, match=r"us_nonesuch\.py not found"):
        firmware_module("us_nonesuch")
