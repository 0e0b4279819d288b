"""What deploy/ ships: the systemd unit (systemd itself parses it, its sandbox stays tight)
and the adapter power-cycle script, run against a stand-in busctl."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.config_toml import load_config

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


# --- the adapter power-cycle (deploy/urbansense-bt-powercycle) ---

POWERCYCLE = ROOT / "deploy" / "urbansense-bt-powercycle"
_FAKE_BUSCTL = """#!/bin/sh
# busctl stand-in: logs its arguments, keeps the adapter's Powered state in a file.
echo "$*" >> "$FAKE_DIR/calls"
case $2 in
    set-property)
        [ "${FAKE_REFUSE:-}" = "$8" ] && { echo "Failed: org.bluez.Error.Failed" >&2; exit 1; }
        echo "$8" > "$FAKE_DIR/powered" ;;
    get-property)
        if [ -n "${FAKE_STUCK_OFF:-}" ]; then echo "b false"; else echo "b $(cat "$FAKE_DIR/powered")"; fi ;;
esac
"""


def _fake_bus(tmp_path: Path, **env: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "busctl").write_text(_FAKE_BUSCTL)
    (bin_dir / "busctl").chmod(0o755)
    (tmp_path / "powered").write_text("true\n")
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_DIR": str(tmp_path),
            "URBANSENSE_BT_OFF_S": "0", "URBANSENSE_BT_ON_WAIT_S": "0", **env}


def _calls(tmp_path: Path) -> list[str]:
    f = tmp_path / "calls"
    return f.read_text().splitlines() if f.exists() else []


def _set(adapter: str, value: str) -> str:
    return f"--system set-property org.bluez /org/bluez/{adapter} org.bluez.Adapter1 Powered b {value}"


def test_power_cycle_script_is_posix_sh_and_executable() -> None:
    assert os.access(POWERCYCLE, os.X_OK)
    assert POWERCYCLE.read_text().startswith("#!/bin/sh\n")
    for shell in ("sh", "dash", "busybox"):
        exe = shutil.which(shell)
        if exe is not None:
            argv = [exe, "sh", "-n"] if shell == "busybox" else [exe, "-n"]
            subprocess.run([*argv, str(POWERCYCLE)], check=True, timeout=10)


def test_power_cycle_script_turns_the_adapter_off_then_on_over_dbus(tmp_path: Path) -> None:
    r = subprocess.run([str(POWERCYCLE), "hci1"], env=_fake_bus(tmp_path), capture_output=True,
                       text=True, timeout=30, check=False)
    assert r.returncode == 0, r.stderr
    assert _calls(tmp_path) == [
        _set("hci1", "false"),
        _set("hci1", "true"),
        "--system get-property org.bluez /org/bluez/hci1 org.bluez.Adapter1 Powered",
    ]
    assert (tmp_path / "powered").read_text().strip() == "true"


@pytest.mark.parametrize("env", [{"FAKE_REFUSE": "false"}, {"FAKE_REFUSE": "true"},
                                 {"FAKE_STUCK_OFF": "1"}])
def test_power_cycle_script_fails_when_bluez_refuses_or_the_adapter_stays_off(
    tmp_path: Path, env: dict[str, str]
) -> None:
    r = subprocess.run([str(POWERCYCLE)], env=_fake_bus(tmp_path, **env), capture_output=True,
                       text=True, timeout=30, check=False)
    assert r.returncode == 1 and "hci0" in r.stderr


def test_power_cycle_script_refuses_what_is_not_an_adapter_name(tmp_path: Path) -> None:
    r = subprocess.run([str(POWERCYCLE), "../hci0"], env=_fake_bus(tmp_path),
                       capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 2 and _calls(tmp_path) == []


def test_power_cycle_script_powers_the_adapter_on_when_killed_while_off(tmp_path: Path) -> None:
    """The gateway's timeout sends TERM to the group: the adapter must not stay off."""
    env = _fake_bus(tmp_path, URBANSENSE_BT_OFF_S="600")
    p = subprocess.Popen([str(POWERCYCLE)], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while _set("hci0", "false") not in _calls(tmp_path):
            assert time.monotonic() < deadline and p.poll() is None, "never powered off"
            time.sleep(0.01)
        os.killpg(p.pid, signal.SIGTERM)
        assert p.wait(timeout=10) == 1
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
    assert _calls(tmp_path)[-1] == _set("hci0", "true")
    assert (tmp_path / "powered").read_text().strip() == "true"


def test_unit_grants_what_the_power_cycle_needs_and_no_more() -> None:
    """D-Bus over AF_UNIX plus BlueZ's bluetooth group; no capability, no AF_BLUETOOTH."""
    text = UNIT.read_text()
    families = re.search(r"^RestrictAddressFamilies=(.*)$", text, re.M)
    assert families and "AF_UNIX" in families.group(1).split()
    assert "AF_BLUETOOTH" not in text.replace("No AF_BLUETOOTH", "")
    groups = re.search(r"^SupplementaryGroups=(.*)$", text, re.M)
    assert groups and "bluetooth" in groups.group(1).split()
    assert re.search(r"^CapabilityBoundingSet=$", text, re.M)
    assert not re.search(r"^(InaccessiblePaths|TemporaryFileSystem)=.*/run", text, re.M)


def test_example_power_cycle_command_is_the_installed_script() -> None:
    cfg = load_config(ROOT / "examples" / "gateway.toml")
    exe, *args = cfg.ble.power_cycle_command
    assert args == ["{adapter}"]
    docs = (ROOT / "docs" / "GATEWAY.md").read_text()
    assert f"deploy/urbansense-bt-powercycle {exe}" in docs  # the install step puts it there
