"""The README's main job, end to end: simulator -> real gateways -> private mosquitto -> consumer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_accounts_for_every_frame(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "urbansense", "demo", "--duration", "12s", "--speed", "120",
         "--nodes", "80", "--seed", "3", "--json", "--no-plots", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=170, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # --json: stdout holds the summary and nothing else
    total = summary["total"]
    assert total["sent"] > 50
    assert total["delivered"] > 0
    assert total["duplicated"] == 0 and total["wrong"] == 0 and total["missing"] == 0
    assert total["undecodable"] == 0
    assert total["sent"] == total["lost_on_air"] + total["lost_at_gateway"] + total["delivered"]
    for kind in ("parking", "bin", "water"):
        c = summary["per_kind"][kind]
        assert set(c) >= {"sent", "lost_on_air", "delivered", "duplicated", "wrong"}
        assert c["sent"] > 0, kind
    truth = [json.loads(line) for line in (out / "truth.jsonl").read_text().splitlines()]
    assert len(truth) == total["sent"]
    assert summary["battery_life_years"]["parking"]["p50"] > 0
    assert "status page" in proc.stderr


def test_demo_says_what_is_missing_without_mosquitto(tmp_path: Path) -> None:
    env = {"PATH": str(tmp_path)}  # no mosquitto on this PATH, nor in the sbin folders:
    code = (
        "import urbansense.broker as b, sys\n"
        "b.SBIN_DIRS = ()\n"
        "from urbansense.cli import main\n"
        "sys.exit(main(['demo', '--duration', '1s']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "mosquitto is not installed" in proc.stderr and "make setup" in proc.stderr
