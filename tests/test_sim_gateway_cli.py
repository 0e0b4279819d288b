"""docs/SIMULATOR.md, "Gateways in the loop", followed to the letter: the registry from
`urbansense sim registry`, a gateway started on its own with `urbansense gateway run`, the
simulator started FIRST (it waits for the gateway's BLE socket), then the broker's frames
checked against the truth file."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.test_gw_support import Subscriber, wait_for

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "SIMULATOR.md"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "urbansense", *args]


async def test_the_documented_commands_put_a_simulated_street_through_a_separate_gateway(
    tmp_path: Path, mqtt_broker: Any,
) -> None:
    text = DOC.read_text()
    for needle in ("urbansense sim registry", "--gateway-socket gw-1=", "--pty-dir", "sim_socket"):
        assert needle in text, needle  # the commands below are the documented ones
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    reg = await asyncio.create_subprocess_exec(
        *_cli("sim", "registry", "--scenario", "scenarios/smoke.toml", "--out", str(tmp_path / "nodes.jsonl")),
        cwd=ROOT, env=env, stderr=subprocess.PIPE)
    _, reg_err = await asyncio.wait_for(reg.communicate(), 120)
    assert reg.returncode == 0, reg_err.decode()
    assert (tmp_path / "nodes.jsonl").stat().st_mode & 0o777 == 0o600
    serial = [ln.split()[2] for ln in reg_err.decode().splitlines() if ln.startswith("serial node ")]
    assert serial == ["bin-00003", "water-00004"]
    ptys, air = tmp_path / "pty", tmp_path / "air-gw-1.sock"
    ports = ", ".join(f'"{ptys / name}"' for name in serial)
    (tmp_path / "gateway.toml").write_text(f"""
[gateway]
site = "smoke"
id = "gw-1"
registry = "nodes.jsonl"
data_dir = "data"
[batch]
max_age_s = 0.5
[mqtt]
brokers = ["{mqtt_broker.host}:{mqtt_broker.port}"]
[serial]
ports = [{ports}]
retry_min_s = 0.1
retry_max_s = 0.5
[ble]
enabled = true
backend = "datagram"
datagram_socket = "{air}"
[http]
enabled = false
""")
    sub = Subscriber(mqtt_broker, "urbansense/v1/smoke/gw-1/up").start()
    await asyncio.wait_for(sub.ready.wait(), 10)
    truth = tmp_path / "truth.jsonl"
    sim = await asyncio.create_subprocess_exec(
        *_cli("sim", "run", "--scenario", "scenarios/smoke.toml", "--duration", "30m", "--realtime",
              "--speed", "300", "--serial", "pty", "--pty-dir", str(ptys), "--gateway-socket", f"gw-1={air}",
              "--truth", str(truth), "--json"),
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    gw = None
    try:
        assert sim.stderr is not None
        seen: list[str] = []
        while not any("waiting for gateway gw-1" in ln for ln in seen):  # ptys printed, then the wait
            seen.append((await asyncio.wait_for(sim.stderr.readline(), 60)).decode())
        assert any(f"serial node bin-00003: {ptys}/bin-00003 -> /dev/pts/" in ln for ln in seen), seen
        gw = await asyncio.create_subprocess_exec(
            *_cli("gateway", "run", "--config", str(tmp_path / "gateway.toml")), cwd=ROOT, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        _, err = await asyncio.wait_for(sim.communicate(), 120)
        assert sim.returncode == 0, err.decode()[-2000:]
        records = [json.loads(ln) for ln in truth.read_text().splitlines()]
        handed = {(r["node_id"], r["fcnt"]) for r in records if "gw-1" in r["delivered_to"]}
        acked = {(r["node_id"], r["fcnt"]) for r in records if r["transport"] == "serial" and r["acked"]}
        assert len(handed) > 20 and acked
        await wait_for(lambda: handed <= set(sub.keys()), timeout_s=20, what="every frame the gateway was handed")
        assert acked <= handed
        ble = [r for r in records if r["transport"] == "ble"]
        assert all(r["transmissions"] >= 1 for r in ble) and max(r["transmissions"] for r in ble) > 1
    finally:
        if sim.returncode is None:
            sim.kill()
            await sim.wait()
        if gw is not None:
            gw.terminate()
            await asyncio.wait_for(gw.wait(), 15)
        await sub.stop()
