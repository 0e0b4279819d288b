"""What an operator meets: every configured file checked at start, one reload path (SIGHUP)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway import config_toml
from gateway.app import Gateway
from gateway.config import BrokerAddress, GatewayConfig, MqttConfig
from gateway.errors import ConfigError
from gateway.outbox import Outbox
from tests.support.broker import TlsMaterial, make_client_cert, make_tls_material
from tests.test_gw_support import frame, make_config, wait_for
from urbansense.wire.protocol import T_STATUS

ROOT = Path(__file__).resolve().parents[1]
_NOWHERE = BrokerAddress("127.0.0.1", 1)  # never connected to: these tests stop at start


def _all_files(tmp_path: Path, tls: TlsMaterial) -> dict[str, Path]:
    cert, key = make_client_cert(tls, tmp_path / "client")
    pw = tmp_path / "mqtt.password"
    pw.write_text("pw\n")
    pw.chmod(0o600)
    return {"ca_file": tls.ca_cert, "cert_file": cert, "key_file": key, "password_file": pw}


@pytest.mark.parametrize("key", ["ca_file", "cert_file", "key_file", "password_file"])
def test_a_missing_file_the_config_names_is_refused_at_start_with_its_key_and_path(
    tmp_path: Path, tls_material: TlsMaterial, key: str
) -> None:
    """Before: a missing ca_file or cert_file passed start and was retried for ever."""
    files = _all_files(tmp_path, tls_material)
    files[key] = tmp_path / "missing" / f"{key}.pem"
    cfg = make_config(tmp_path, _NOWHERE, mqtt__tls=True, **{f"mqtt__{k}": p for k, p in files.items()})
    with pytest.raises(ConfigError) as err:
        Gateway(cfg)
    assert err.value.key == f"mqtt.{key}"
    assert str(files[key]) in err.value.problem


def test_all_files_present_pass_the_start_checks(tmp_path: Path, tls_material: TlsMaterial) -> None:
    files = _all_files(tmp_path, tls_material)
    Gateway(make_config(tmp_path, _NOWHERE, mqtt__tls=True, **{f"mqtt__{k}": p for k, p in files.items()}))


def test_a_client_key_that_does_not_match_the_certificate_is_refused(
    tmp_path: Path, tls_material: TlsMaterial
) -> None:
    files = _all_files(tmp_path, tls_material)
    _, other_key = make_client_cert(tls_material, tmp_path / "other", name="other")
    files["key_file"] = other_key
    cfg = make_config(tmp_path, _NOWHERE, mqtt__tls=True, **{f"mqtt__{k}": p for k, p in files.items()})
    with pytest.raises(ConfigError) as err:
        Gateway(cfg)
    assert err.value.key == "mqtt.cert_file" and str(other_key) in err.value.problem


def test_a_ca_file_that_is_no_certificate_is_refused_at_start(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("not a certificate\n")
    cfg = make_config(tmp_path, _NOWHERE, mqtt__tls=True, mqtt__ca_file=ca)
    with pytest.raises(ConfigError) as err:
        Gateway(cfg)
    assert err.value.key == "mqtt.ca_file" and str(ca) in err.value.problem


async def _wait_line(lines: list[str], text: str, proc: asyncio.subprocess.Process, timeout_s: float) -> None:
    assert proc.stdout is not None
    async with asyncio.timeout(timeout_s):
        while not any(text in line for line in lines):
            raw = await proc.stdout.readline()
            if not raw:
                raise AssertionError(f"gateway exited before {text!r}: {lines[-20:]}")
            lines.append(raw.decode(errors="replace").rstrip())


async def test_sighup_reloads_the_mqtt_password_file(tmp_path: Path, mqtt_broker_auth: Any) -> None:
    """Before: the password file was read only at start, and SIGHUP killed the gateway."""
    pw = tmp_path / "mqtt.password"
    pw.write_text("wrong\n")
    pw.chmod(0o600)
    cfg = make_config(tmp_path, mqtt_broker_auth)  # writes the registry
    (tmp_path / "gateway.toml").write_text(f"""
[gateway]
site = "reload"
id = "gw-1"
registry = "{cfg.registry}"
data_dir = "{tmp_path / 'data'}"
[mqtt]
brokers = ["{mqtt_broker_auth.host}:{mqtt_broker_auth.port}"]
username = "{mqtt_broker_auth.username}"
password_file = "{pw}"
backoff_min_s = 0.5
backoff_max_s = 30.0
[http]
enabled = false
""")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "urbansense", "gateway", "run", "--config", str(tmp_path / "gateway.toml"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT,
    )
    lines: list[str] = []
    try:
        await _wait_line(lines, "event=broker_connect_failed", proc, 20)
        pw.write_text(mqtt_broker_auth.password + "\n")
        proc.send_signal(signal.SIGHUP)
        await _wait_line(lines, "event=broker_connected", proc, 20)
        assert any("event=credentials_reloaded" in line for line in lines)
        assert proc.returncode is None
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 15)


async def test_a_client_certificate_the_broker_requires_is_reported_as_the_tls_alert(
    tmp_path: Path, mqtt_broker_factory: Any, tls_material: TlsMaterial, running: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before: 'Operation timed out'; the real cause was on paho's own log line."""
    broker = mqtt_broker_factory(tls=tls_material, extra_config="require_certificate true")
    cfg = make_config(tmp_path, broker, mqtt__tls=True, mqtt__ca_file=tls_material.ca_cert,
                      mqtt__connect_timeout_s=30.0)
    gw = await running(cfg)
    assert gw.publisher is not None
    # At once, not after connect_timeout_s: paho closed the socket on the alert.
    await wait_for(lambda: gw.metrics.broker_errors.total() >= 1, timeout_s=10, what="a refused connect")
    assert "certificate required" in gw.publisher.last_error
    failed = [r.getMessage() for r in caplog.records if "event=broker_connect_failed" in r.getMessage()]
    assert failed and "certificate required" in failed[0]


async def test_with_the_client_certificate_the_broker_requires_the_gateway_forwards(
    tmp_path: Path, mqtt_broker_factory: Any, tls_material: TlsMaterial, running: Any,
) -> None:
    broker = mqtt_broker_factory(tls=tls_material, extra_config="require_certificate true")
    cert, key = make_client_cert(tls_material, tmp_path / "client")
    cfg = make_config(tmp_path, broker, mqtt__tls=True, mqtt__ca_file=tls_material.ca_cert,
                      mqtt__cert_file=cert, mqtt__key_file=key)
    gw = await running(cfg)
    assert gw.publisher is not None
    await asyncio.wait_for(gw.publisher.connected.wait(), 10)
    gw.feed(frame(1, 1), "test")
    await wait_for(lambda: gw.metrics.published_readings.total() == 1, what="published with a client cert")


async def test_connect_failures_are_rate_limited_per_cause_not_per_broker(
    tmp_path: Path, mqtt_broker_factory: Any, tls_material: TlsMaterial, running: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before: the key was the broker, so a new cause on the same broker (here the broker
    going away after a wrong CA) stayed at DEBUG until a restart."""
    broker = mqtt_broker_factory(tls=tls_material)
    cfg = make_config(tmp_path, broker, mqtt__tls=True,
                      mqtt__ca_file=make_tls_material(tmp_path / "other-ca").ca_cert)
    gw = await running(cfg)
    assert gw.publisher is not None

    def warned() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and "event=broker_connect_failed" in r.getMessage()]

    await wait_for(lambda: gw.metrics.broker_errors.total() >= 3, what="refused handshakes")
    assert len(warned()) == 1 and "certificate verify failed" in warned()[0]
    broker.stop()
    await wait_for(lambda: len(warned()) == 2, what="the new cause at WARNING")
    assert "refused" in warned()[1].lower()


def _keys_the_loader_reads() -> list[str]:
    """Every dotted key config_from_dict reads (it reads each one, present or not)."""
    seen: list[str] = []
    real = config_toml._Section._get

    def record(self: Any, k: str) -> Any:
        seen.append(self._key(k))
        return real(self, k)

    sections = {"gateway", "batch", "outbox", "publish", "mqtt", "serial", "ble", "http", "health"}
    raw = {"gateway": {"site": "s", "id": "g", "registry": "r", "data_dir": "d"}, "mqtt": {"brokers": ["h:1"]}}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(config_toml._Section, "_get", record)
        config_toml.config_from_dict(raw, Path("/nonexistent"))
    return [k for k in seen if k not in sections]


def test_the_example_config_lists_every_key_the_loader_accepts() -> None:
    """Before: queue_size, outbox.path, mqtt.client_id, mqtt.tls ... were missing."""
    text = (ROOT / "examples" / "gateway.toml").read_text()
    listed: set[str] = set()
    section = ""
    for line in text.splitlines():
        if m := re.match(r"^\[(\w+)\]", line):
            section = m.group(1)
        elif m := re.match(r"^#? ?(\w+) = ", line):
            listed.add(f"{section}.{m.group(1)}" if section else m.group(1))
    keys = _keys_the_loader_reads()
    assert len(keys) > 40
    assert sorted(set(keys) - listed) == []
    assert sorted(listed - set(keys)) == []  # nothing listed that the loader would refuse
    cfg = config_toml.load_config(ROOT / "examples" / "gateway.toml")  # and it loads
    assert cfg.mqtt.keepalive_s == MqttConfig().keepalive_s


def test_the_gateway_doc_describes_every_key() -> None:
    doc = (ROOT / "docs" / "GATEWAY.md").read_text()
    # A row of the configuration table each, not a mention in prose (batch.durable_ms had only that).
    missing = [k for k in _keys_the_loader_reads() if f"| `{k}` |" not in doc]
    assert missing == []


_LITERAL = {"none": None, "false": False, "true": True, "`[]`": []}


def test_the_defaults_the_gateway_doc_states_are_the_codes() -> None:
    """README's "within `batch.durable_ms` (1 s)" and every default of the configuration table
    that is a value (not "required" or a path made from others) is what the loader starts from."""
    doc = (ROOT / "docs" / "GATEWAY.md").read_text()
    defaults = GatewayConfig(site="s", gateway_id="g", registry=Path("r"), data_dir=Path("d"))
    checked = {}
    for key, cell in re.findall(r"^\| `(\w+\.\w+)` \| ([^|]+?) \|", doc, re.M):
        section, _, name = key.partition(".")
        if section == "gateway":
            continue
        if cell in _LITERAL:
            want: object = _LITERAL[cell]
        elif m := re.fullmatch(r'`"(.*)"`', cell):
            want = m.group(1)
        elif re.fullmatch(r"0x[0-9A-Fa-f]+|\d+(\.\d+)?", cell):
            want = float.fromhex(cell) if cell.startswith("0x") else float(cell)
        else:
            continue  # "required", `<data_dir>/outbox.db`, ...
        got = getattr(getattr(defaults, section), name)
        checked[key] = (None if cell == "none" and got == "" else got, want)  # "": no username
    assert len(checked) > 40 and checked["batch.durable_ms"][1] == 1000
    assert {k: v for k, v in checked.items() if v[0] != v[1]} == {}


def test_the_outbox_database_is_created_0600_whatever_the_umask(tmp_path: Path) -> None:
    """Before: 0644 under the usual umask 022 (only the systemd unit's UMask=0077 saved it)."""
    old = os.umask(0o022)
    try:
        ob = Outbox(tmp_path / "data" / "outbox.db", 1 << 20)
        ob.close()
    finally:
        os.umask(old)
    files = sorted(tmp_path.joinpath("data").glob("outbox.db*"))
    assert files and {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: 0o600 for p in files}


async def test_api_status_shows_the_flags_of_the_latest_status_frame(
    tmp_path: Path, mqtt_broker: Any, running: Any
) -> None:
    """Before: flags are omitted when 0, so /api/status kept showing a cleared flag."""
    gw = await running(make_config(tmp_path, mqtt_broker))

    async def node1() -> dict[str, Any]:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.http_port)
        writer.write(b"GET /api/status HTTP/1.1\r\nHost: x\r\n\r\n")
        body = (await reader.read()).split(b"\r\n\r\n", 1)[1]
        writer.close()
        return next(n for n in json.loads(body)["nodes"] if n["node_id"] == 1)  # type: ignore[no-any-return]

    gw.feed(frame(1, 1, {5: 3000, 10: 1}, ftype=T_STATUS), "test")
    await wait_for(lambda: gw.metrics.readings_committed.total() == 1, what="status with the flag")
    n = await node1()
    assert n["flags"] == 1 and n["readings"]["flags"] == 1 and n["low_battery"]
    gw.feed(frame(1, 2, {5: 3600, 11: 1}), "test")  # a report: flags never ride in one
    await wait_for(lambda: gw.metrics.readings_committed.total() == 2, what="a report")
    assert (await node1())["flags"] == 1
    gw.feed(frame(1, 3, {5: 3600}, ftype=T_STATUS), "test")  # the flag cleared: omitted
    await wait_for(lambda: gw.metrics.readings_committed.total() == 3, what="status without flags")
    n = await node1()
    assert n["flags"] == 0 and "flags" not in n["readings"] and not n["low_battery"]


def test_gateway_check_names_a_missing_ca_file_and_passes_a_good_config(tmp_path: Path) -> None:
    """The install step run before enabling the unit."""
    cfg = make_config(tmp_path, _NOWHERE)  # writes the registry
    toml = tmp_path / "gateway.toml"
    base = f"""
[gateway]
site = "check"
id = "gw-1"
registry = "{cfg.registry}"
data_dir = "{tmp_path / 'data'}"
[mqtt]
brokers = ["127.0.0.1:1"]
"""
    run = [sys.executable, "-m", "urbansense", "gateway", "check", "--config", str(toml)]
    toml.write_text(base)
    ok = subprocess.run(run, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert ok.returncode == 0 and ok.stdout.startswith("ok:"), ok.stderr
    toml.write_text(base + f'ca_file = "{tmp_path / "ca.crt"}"\n')
    bad = subprocess.run(run, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert bad.returncode == 2
    assert f"mqtt.ca_file: file not found: {tmp_path / 'ca.crt'}" in bad.stderr


async def test_api_status_shows_each_downlink_listener(
    tmp_path: Path, mqtt_broker: Any, running: Any
) -> None:
    gw = await running(make_config(tmp_path, mqtt_broker))
    await wait_for(lambda: gw.status()["downlink_listeners"][0]["connected"], what="listener up")
    st = gw.status()
    assert st["downlink_listeners"] == [
        {"broker": f"{mqtt_broker.host}:{mqtt_broker.port}", "connected": True, "last_error": ""}]
    assert st["downlinks_pending"] == 0
