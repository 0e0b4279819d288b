"""The systemd unit as shipped: systemd itself parses it, and its sandbox stays tight."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "deploy" / "urbansense-gateway.service"
ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed")


def _unit_here(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's console script (verify checks it)."""
    exe = Path(sys.executable).with_name("urbansense")
    text = UNIT.read_text().replace("/opt/urbansense/.venv/bin/urbansense", str(exe))
    out = tmp_path / UNIT.name
    out.write_text(text)
    return out


@needs_systemd
def test_systemd_verify_accepts_the_unit(tmp_path: Path) -> None:
    assert ANALYZE is not None
    r = subprocess.run([ANALYZE, "verify", str(_unit_here(tmp_path))],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


@needs_systemd
def test_systemd_security_exposure_is_low(tmp_path: Path) -> None:
    assert ANALYZE is not None
    r = subprocess.run([ANALYZE, "security", "--offline=true", "--no-pager", str(_unit_here(tmp_path))],
                       capture_output=True, text=True, timeout=60, check=False)
    if "unrecognized option" in r.stderr:
        pytest.skip("systemd-analyze too old for security --offline (systemd < 250)")
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
    assert m, r.stdout[-2000:] + r.stderr[-2000:]
    assert float(m.group(1)) <= 2.0  # systemd's scale: 0 (tight) .. 10 (unprotected); "OK" below 4


def test_unit_runs_the_documented_command_as_an_unprivileged_user() -> None:
    text = UNIT.read_text()
    assert "ExecStart=/opt/urbansense/.venv/bin/urbansense gateway run --config /etc/urbansense/gateway.toml" in text
    assert re.search(r"^User=urbansense$", text, re.M) and "CapabilityBoundingSet=\n" in text
    assert "StateDirectoryMode=0700" in text and "UMask=0077" in text  # key files stay private
