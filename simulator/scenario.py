"""Scenario files (scenarios/*.toml): gateways, node groups, radio, faults."""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from urbansense.compat import DATACLASS_SLOTS, tomllib
from urbansense.durations import parse_duration_s
from urbansense.wire.node_config import KINDS

# The kind in a simulated node id's top byte: parking 1, bin 2, water 3.
KIND_CODES = {kind: code for code, kind in enumerate(KINDS, 1)}


@dataclass(**DATACLASS_SLOTS)
class Group:
    kind: str
    count: int
    board: str
    transport: str = "ble"
    gateway: str | None = None  # serial nodes: whose port
    area: tuple[float, float, float, float] = (0.0, 0.0, 100.0, 100.0)
    config: dict[str, Any] = field(default_factory=dict)
    world: dict[str, Any] = field(default_factory=dict)
    sensor: str = "vl53l1x"
    line_noise_ber: float = 0.0
    initial_used_fraction: float = 0.0
    flash: str | None = None  # a provisioned board's files (simulator/board_flash.py): one node


@dataclass(**DATACLASS_SLOTS)
class Fault:
    kind: str  # reboot | brownout | power_loss | clock_jump | gateway_out_of_range
    at_s: float
    node: str | None = None  # a node name, or
    group: int | None = None  # every node of a group, or
    fraction: float | None = None  # this share of all nodes (chosen from the seed)
    value: float = 0.0  # brown-out: seconds without power; clock jump: seconds
    gateway: str | None = None
    until_s: float | None = None


@dataclass(**DATACLASS_SLOTS)
class Scenario:
    name: str
    seed: int = 1
    duration_s: float = 86400.0
    start_epoch: int = 1772409600  # 2026-03-02T00:00:00Z, a Monday
    cell: str = "lisocl2_d_19ah"
    # Time the MicroPython VM spends running one wake cycle's Python after boot, at CPU
    # current. An estimate (CPython runs a cycle in ~0.1 ms; MicroPython on a 160 MHz ESP32
    # is ~50-100x slower), to be replaced by a measurement on the board or the VM.
    firmware_cpu_ms: float = 10.0
    gateways: list[dict[str, Any]] = field(default_factory=list)
    radio: dict[str, Any] = field(default_factory=dict)
    groups: list[Group] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)

    def node_count(self) -> int:
        return sum(g.count for g in self.groups)


def _dur(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) else parse_duration_s(str(v))


def _epoch(v: Any) -> int:
    if isinstance(v, int):
        return v
    s = str(v).rstrip("Z")
    return calendar.timegm(time.strptime(s, "%Y-%m-%dT%H:%M:%S"))


def from_dict(d: dict[str, Any], name: str = "scenario") -> Scenario:
    sim = d.get("sim", {})
    sc = Scenario(name=str(sim.get("name", name)))
    sc.seed = int(sim.get("seed", sc.seed))
    if "duration" in sim:
        sc.duration_s = _dur(sim["duration"])
    if "start" in sim:
        sc.start_epoch = _epoch(sim["start"])
    sc.cell = str(sim.get("cell", sc.cell))
    sc.firmware_cpu_ms = float(sim.get("firmware_cpu_ms", sc.firmware_cpu_ms))
    default_board = str(sim.get("board", "city-wroom32e"))
    sc.gateways = [dict(g) for g in d.get("gateways", [])] or [{"id": "gw-1", "x": 0.0, "y": 0.0}]
    sc.radio = dict(d.get("radio", {}))
    for g in d.get("nodes", []):
        if "flash" in g:  # one node, of the kind and board its own files name
            from simulator import board_flash

            fl = board_flash.load(Path(str(g["flash"])))
            g = {**g, "kind": fl.config.get("kind"), "board": fl.board["name"], "count": 1,
                 "transport": fl.config.get("transport", "ble")}
        kind = str(g["kind"])
        if kind not in KIND_CODES:
            raise ValueError(f"scenario {sc.name}: unknown node kind {kind!r}")
        area = g.get("area", [0.0, 0.0, 100.0, 100.0])
        sc.groups.append(Group(
            kind=kind,
            count=int(g.get("count", 1)),
            board=str(g.get("board", default_board)),
            transport=str(g.get("transport", "ble")),
            gateway=g.get("gateway"),
            area=(float(area[0]), float(area[1]), float(area[2]), float(area[3])),
            config=dict(g.get("config", {})),
            world=dict(g.get("world", {})),
            sensor=str(g.get("sensor", "vl53l1x")),
            line_noise_ber=float(g.get("line_noise_ber", 0.0)),
            initial_used_fraction=float(g.get("initial_used_fraction", 0.0)),
            flash=str(g["flash"]) if "flash" in g else None,
        ))
    for f in d.get("faults", []):
        sc.faults.append(Fault(
            kind=str(f["kind"]),
            at_s=_dur(f.get("at", 0)),
            node=f.get("node"),
            group=f.get("group"),
            fraction=f.get("fraction"),
            value=float(f.get("value", 0.0)),
            gateway=f.get("gateway"),
            until_s=_dur(f["until"]) if "until" in f else None,
        ))
    # A gateway named nowhere else would be taken for the first one (a serial group's frames
    # credited to it) or fail deep in the build (a fault): name it here.
    ids = {str(g.get("id", f"gw-{i + 1}")) for i, g in enumerate(sc.gateways)}
    for where, gw in [("node group", grp.gateway) for grp in sc.groups] + [("fault", f.gateway) for f in sc.faults]:
        if gw is not None and gw not in ids:
            raise ValueError(f"scenario {sc.name}: {where} names gateway {gw!r}, not one of {sorted(ids)}")
    return sc


def load(path: str | Path) -> Scenario:
    p = Path(path)
    with p.open("rb") as fh:
        return from_dict(tomllib.load(fh), name=p.stem)
