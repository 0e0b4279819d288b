"""The shipped scenarios parse, build and run; a run is the same whatever the hash seed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from simulator import scenario
from simulator.sim import Simulation

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "scenarios"


@pytest.mark.parametrize(("name", "nodes", "gateways"), [("angers-centre", 870, 2), ("city-10k", 10_000, 16)])
def test_shipped_scenario_parses_builds_and_runs(name: str, nodes: int, gateways: int) -> None:
    sc = scenario.load(SCENARIOS / f"{name}.toml")
    assert sc.node_count() == nodes and len(sc.gateways) == gateways
    ids = {g["id"] for g in sc.gateways}
    assert all(g.gateway in ids for g in sc.groups if g.transport == "serial")
    assert all(f.gateway in ids for f in sc.faults if f.kind == "gateway_out_of_range")
    # every group, a few nodes each (10,000 nodes take a minute to boot)
    sim = Simulation(SCENARIOS / f"{name}.toml", nodes=min(nodes, 300))
    assert {n.group for n in sim.nodes} == set(range(len(sc.groups)))
    summary = sim.run(120.0)
    sim.close()
    assert summary["firmware_errors"] == {} and summary["decode_errors"] == {}
    assert summary["wake_cycles"] >= len(sim.nodes)  # every node booted
    assert summary["frames"]["total"]["heard"] > 0.5 * summary["frames"]["total"]["sent"]


def test_same_summary_under_different_hash_seeds(tmp_path: Path) -> None:
    """No set or dict-of-str iteration order leaks into a run: byte-identical JSON summaries."""
    out = []
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        res = subprocess.run(
            [sys.executable, "-m", "urbansense", "sim", "run", "--scenario", str(SCENARIOS / "smoke.toml"),
             "--duration", "2h", "--json", "--truth", str(tmp_path / f"truth-{hash_seed}.jsonl")],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=100, check=True)
        out.append(res.stdout)
    assert out[0] == out[1] and out[0].startswith("{")
    assert (tmp_path / "truth-1.jsonl").read_bytes() == (tmp_path / "truth-2.jsonl").read_bytes()
