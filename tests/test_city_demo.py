"""``urbansense demo --city``: the city tier end to end, every part a child process (NATS nodes,
PostgreSQL, collectors, gateways), with a NATS node stopped and a collector SIGKILLed mid-run;
the database read back against the simulator's truth."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(300)
def test_city_demo_stores_every_heard_frame_once_through_failures(tmp_path: Path) -> None:
    out = tmp_path / "city"
    proc = subprocess.run(
        [sys.executable, "-m", "urbansense", "demo", "--city", "--duration", "16s", "--speed", "120",
         "--nodes", "80", "--seed", "3", "--json", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=280, check=False,
    )
    # stderr: progress and "not drained" warnings; stdout: the ledger, which says what was missing
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    s = json.loads(proc.stdout)
    t = s["total"]
    assert t["sent"] > 50 and t["stored"] > 0
    assert t["missing"] == 0 and t["duplicated"] == 0 and t["wrong"] == 0
    assert t["sent"] == t["lost_on_air"] + t["lost_at_gateway"] + t["undecodable"] + t["stored"]
    assert t["cross_gateway_copies"] > 0  # overlapping coverage: frames heard twice, stored once
    assert s["readings_rows"] == t["stored"]
    assert any("stopped NATS node" in e for e in s["events"])
    assert any("SIGKILLed collector" in e for e in s["events"])
    assert len(s["simulation"]["gateways"]) == 3
    for gw in s["simulation"]["gateways"]:  # each gateway its own `urbansense gateway run` process
        log = (out / f"{gw}.log").read_text()
        assert "event=gateway_started" in log and "protocol=jetstream" in log
        assert s["gateway"][gw]["published_readings"] > 0
