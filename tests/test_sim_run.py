"""Whole runs of the real firmware: reproducible, decodable by the gateway, faults survived."""

from __future__ import annotations

import bisect
import json
import random
from pathlib import Path
from typing import Any

from simulator.bins import Bin
from simulator.parallel import run_parallel
from simulator.parking import ParkingParams, ParkingSpace
from simulator.sim import Simulation
from urbansense.wire.protocol import TYPE_NAMES, NodeKeys, parse_header, verify_uplink
from urbansense.wire.quantities import QUANTITIES

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "scenarios" / "smoke.toml"


def _run(tmp: Path, name: str, seed: int, hours: float = 8.0) -> tuple[dict[str, object], str]:
    sim = Simulation(SMOKE, seed=seed)
    path = tmp / name
    sim.open_truth(path)
    summary = sim.run(hours * 3600.0)
    assert sim.truth_out is not None
    sim.truth_out.close()
    sim.close()
    return summary, path.read_text()


def test_same_seed_same_summary_and_truth(tmp_path: Path) -> None:
    s1, t1 = _run(tmp_path, "a.jsonl", 7)
    s2, t2 = _run(tmp_path, "b.jsonl", 7)
    _s3, t3 = _run(tmp_path, "c.jsonl", 8)
    assert json.dumps(s1, sort_keys=True) == json.dumps(s2, sort_keys=True)
    assert t1 == t2 and t1
    assert t1 != t3


def test_sharded_run_gives_the_same_summary() -> None:
    one = Simulation(SMOKE, seed=4).run(4 * 3600.0)
    two = run_parallel(SMOKE, seed=4, duration_s=4 * 3600.0, processes=2)
    assert json.dumps(one, sort_keys=True) == json.dumps(two, sort_keys=True)


def test_every_frame_in_the_truth_decodes_with_the_gateway_codec(tmp_path: Path) -> None:
    sim = Simulation(SMOKE, seed=11)
    keys = {n.node_id: NodeKeys(bytes.fromhex(n.key_hex)) for n in sim.registry()}
    sim.open_truth(tmp_path / "truth.jsonl")
    summary = sim.run(12 * 3600.0)
    assert sim.truth_out is not None
    sim.truth_out.close()
    records = [json.loads(line) for line in (tmp_path / "truth.jsonl").read_text().splitlines()]
    assert len(records) == summary["frames"]["total"]["sent"]  # type: ignore[index]
    assert {r["kind"] for r in records} == {"parking", "bin", "water"}
    last: dict[int, int] = {}
    for r in records:
        frame = bytes.fromhex(r["frame_hex"])
        hdr = parse_header(frame)
        up = verify_uplink(keys[r["node_id"]], frame, hdr, last.get(r["node_id"]))
        last[r["node_id"]] = up.fcnt
        assert up.fcnt == r["fcnt"]
        assert TYPE_NAMES[up.ftype] == r["ftype"]
        assert {QUANTITIES[k].field: v for k, v in up.readings.items()} == r["readings"]
        assert r["lost_on_air"] == (r["transport"] == "ble" and not r["heard_by"])
    assert summary["firmware_errors"] == {} and summary["decode_errors"] == {}


def test_faults_reboot_brownout_clock_jump_out_of_range() -> None:
    sc = {
        "sim": {"name": "faults", "seed": 2},
        "gateways": [{"id": "gw-1", "x": 0.0, "y": 0.0}],
        "nodes": [{"kind": "parking", "count": 3, "area": [0, 0, 20, 20]},
                  {"kind": "water", "count": 3, "area": [0, 0, 20, 20]}],
        "faults": [
            {"kind": "brownout", "node": "water-00001", "at": "2h", "value": 30},
            {"kind": "reboot", "node": "parking-00001", "at": "3h"},
            {"kind": "clock_jump", "node": "water-00002", "at": "4h", "value": 3600},
            {"kind": "gateway_out_of_range", "gateway": "gw-1", "at": "5h", "until": "6h"},
        ],
    }
    sim = Simulation(sc)
    w1 = sim.by_name["water-00001"]
    summary = sim.run(8 * 3600.0)
    assert summary["firmware_errors"] == {}
    assert w1.resets[1] == 2  # power-on at install and after the brown-out
    assert sim.by_name["parking-00001"].resets[2] == 1
    assert summary["air"]["out_of_range"]["gw-1"] > 0  # type: ignore[index]
    # the totalizer never went backwards across the brown-out
    vols = [f.readings[3] for f in sim.frames if f.node == w1.index and 3 in f.readings]
    assert vols == sorted(vols) and vols
    # frame counters never repeat
    for n in sim.nodes:
        fc = [f.fcnt for f in sim.frames if f.node == n.index]
        assert len(fc) == len(set(fc))


def test_a_run_longer_than_the_scenario_still_gets_pin_wakes() -> None:
    """--duration 3d on a 1-day scenario: cars and water pulses still wake nodes on day 3
    (the pin-wake search once stopped at the scenario's duration + 1 day)."""
    sc = {"sim": {"name": "long", "seed": 3, "duration": "1d"}, "gateways": [{"id": "gw"}],
          "nodes": [{"kind": "parking", "count": 3}, {"kind": "water", "count": 3}]}
    sim = Simulation(sc)
    pin_wakes: list[tuple[str, float]] = []
    for node in sim.nodes:
        boot = node.boot

        def record(t: float, cause: int, wake: int, kind: str = node.kind, boot: Any = boot) -> None:
            if wake in (2, 3, 7):  # ext0, ext1, GPIO
                pin_wakes.append((kind, t))
            boot(t, cause, wake)

        node.boot = record  # type: ignore[method-assign]
    one = sim.run(3 * 86400.0)
    assert {k for k, t in pin_wakes if t > 2 * 86400.0} == {"parking", "water"}
    # the sharded run (cli --processes) follows the same schedule
    two = run_parallel(sc, duration_s=3 * 86400.0, processes=2)
    assert json.dumps(one, sort_keys=True) == json.dumps(two, sort_keys=True)


def _timeline(world: Any, t_end: float) -> tuple[Any, ...]:
    world.ensure(t_end)
    if isinstance(world, ParkingSpace):
        n = bisect.bisect_left(world.changes, t_end)
        return (world.changes[:n], world.occ[:n], world.vehicle[:n],
                [tr for tr in world.transients if tr[0] < t_end])
    if isinstance(world, Bin):
        n = bisect.bisect_left(world.times, t_end)
        return world.times[:n], world.fill[:n], [c for c in world.collections if c < t_end]
    n = bisect.bisect_left(world.bp, t_end)
    return world.bp[:n], world.flow[:n], world.vol[:n], world.leaks, world.bursts


def test_the_world_does_not_depend_on_how_often_the_firmware_samples() -> None:
    """Magnetometer noise and ultrasonic pings once drew from the world's stream: from day 2
    the cars and the waste depended on the firmware's sampling settings."""
    def scenario(sampling: bool) -> dict[str, Any]:
        park = {"thresholds": {"confirm_samples": 5}, "intervals": {"confirm_gap_s": 3}} if sampling else {}
        bins = {"intervals": {"measure_s": 300}, "thresholds": {"pings": 9}} if sampling else {}
        return {"sim": {"name": "rng", "seed": 6}, "gateways": [{"id": "gw"}],
                "nodes": [{"kind": "parking", "count": 3, "config": park},
                          {"kind": "bin", "count": 2, "sensor": "jsnsr04t", "config": bins},
                          {"kind": "bin", "count": 1, "config": bins},
                          {"kind": "water", "count": 1}]}
    days = 2 * 86400.0
    runs = []
    for sampling in (False, True):
        sim = Simulation(scenario(sampling))
        sim.run(days)
        runs.append(sim)
    quiet, busy = runs
    assert sum(n.cycles for n in busy.nodes) > sum(n.cycles for n in quiet.nodes)  # it did sample more
    for a, b in zip(quiet.nodes, busy.nodes, strict=True):
        assert _timeline(a.world, 3 * 86400.0) == _timeline(b.world, 3 * 86400.0), a.name
    # ... and it is the world a model alone draws from the node's world stream
    node = quiet.by_name["parking-00001"]
    alone = ParkingSpace(random.Random(f"6:{node.node_id}:world"), ParkingParams(), quiet.t_day0)
    assert _timeline(alone, 3 * 86400.0) == _timeline(node.world, 3 * 86400.0)
