"""A run's summary: what the nodes spent and what became of their frames, in the JSON form
``urbansense sim run --json`` prints.

Its inputs are typed: one ``NodeOutcome`` per node, one ``FrameOutcome`` per frame sent, the
same whether the run was one process or shards merged (simulator/parallel.py). Between
interpreters (a shard on PyPy) they travel as plain tuples (``wire``/``from_wire``), which
pickle the same on PyPy 3.9 and CPython 3.11. ``fate`` says what became of a frame, for
this summary and for the demo's comparison (urbansense/demo.py) alike: "heard" means one thing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, fields
from typing import Any, Union

from simulator.air import Gateway, RadioParams
from simulator.energy import CATEGORIES
from simulator.scenario import Scenario
from urbansense.compat import DATACLASS_SLOTS
from urbansense.wire.protocol import TYPE_NAMES

Readings = dict[int, Union[int, bool]]  # noqa: UP007 - evaluated at run time on PyPy 3.9


@dataclass(**DATACLASS_SLOTS)
class FrameOutcome:
    """One frame sent: who sent it, what it was, what became of it, what the world was."""

    node: int  # the node's index in the scenario
    ftype: int  # -1: the firmware's own codec cannot open it
    transport: str
    heard: int  # bitmask of gateway indexes that received it (BLE on air; serial: the acker)
    acked: bool
    truth: dict[str, Any]
    readings: Readings
    lost_at_boundary: bool = False  # heard by a gateway in the loop, handed to none

    def wire(self) -> tuple[Any, ...]:
        return (self.node, self.ftype, self.transport, self.heard, self.acked, self.truth,
                self.readings, self.lost_at_boundary)

    @classmethod
    def from_wire(cls, t: tuple[Any, ...]) -> FrameOutcome:
        return cls(*t)


@dataclass(**DATACLASS_SLOTS)
class NodeOutcome:
    """One node over the run: charge by power state, wake cycles, faults, its world."""

    index: int
    kind: str
    board: str
    uc: dict[str, float]  # microcoulombs by power state
    ble_init_ms: float
    static_ua: float
    avg_ua: float  # average current, static draw included
    cycles: int
    errors: dict[str, int]
    resets: dict[str, int]
    hung: bool
    flash_writes: int
    console_lines: int
    world: dict[str, float]  # per-kind world statistics (arrivals, collections, litres...)

    def wire(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))

    @classmethod
    def from_wire(cls, t: tuple[Any, ...]) -> NodeOutcome:
        return cls(*t)


FATES = ("heard", "lost_on_air", "serial_unacked")


def fate(transport: str, heard: int, acked: bool) -> str:
    """What became of a frame sent: "heard" when a gateway has it (a BLE frame received on air
    by any gateway; a serial frame the gateway acknowledged, which it does only once the frame
    is durably in its outbox), else "lost_on_air" (BLE) or "serial_unacked"."""
    if transport == "ble":
        return "heard" if heard else "lost_on_air"
    return "heard" if acked else "serial_unacked"


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    i = min(len(s) - 1, max(0, round(q * (len(s) - 1))))
    return s[i]


def _r(x: float, nd: int = 3) -> float:
    return float(round(x, nd))


def build_summary(sc: Scenario, cell: Any, gateways: list[Gateway], nodes: list[NodeOutcome],
                  frames: list[FrameOutcome],
                  air: Any, t_end: float, decode_errors: dict[str, int]) -> dict[str, Any]:
    kinds = sorted({n.kind for n in nodes})
    energy: dict[str, Any] = {}
    life: dict[str, Any] = {}
    for k in kinds:
        ns = [n for n in nodes if n.kind == k]
        avg = [n.avg_ua for n in ns]
        days = t_end / 86400.0 if t_end > 0 else 1.0
        breakdown = {c: _r(sum(n.uc.get(c, 0.0) for n in ns) / len(ns) / days / 1000.0, 3) for c in CATEGORIES}
        # always-on board draws (regulator, battery divider): 86.4 mC/day per uA
        breakdown["static"] = _r(sum(n.static_ua for n in ns) / len(ns) * 86.4, 3)
        energy[k] = {
            "avg_current_ua": {"mean": _r(sum(avg) / len(avg)), "p50": _r(_pct(avg, 0.5)),
                               "p95": _r(_pct(avg, 0.95)), "max": _r(max(avg))},
            "mc_per_day_by_state": breakdown,
            "wake_cycles_per_day": _r(sum(n.cycles for n in ns) / len(ns) / days, 2),
        }
        years = [cell.life_years(a) for a in avg]
        life[k] = {"min": _r(min(years), 2), "p5": _r(_pct(years, 0.05), 2), "p50": _r(_pct(years, 0.5), 2),
                   "mean": _r(sum(years) / len(years), 2), "max": _r(max(years), 2)}
    errors: Counter[str] = Counter()
    resets: Counter[str] = Counter()
    for n in nodes:
        errors.update(n.errors)
        resets.update(n.resets)
    world: dict[str, Any] = {}
    for k in kinds:
        ns = [n for n in nodes if n.kind == k]
        keys = sorted({x for n in ns for x in n.world})
        world[k] = {x: _r(sum(n.world.get(x, 0.0) for n in ns) / len(ns), 2) for x in keys}
        world[k]["per_node_mean"] = True
    return {
        "scenario": sc.name,
        "seed": sc.seed,
        "duration_s": _r(t_end, 3),
        "nodes": {k: sum(1 for n in nodes if n.kind == k) for k in kinds},
        "wake_cycles": sum(n.cycles for n in nodes),
        "frames": frame_counts(nodes, frames),
        "air": {"adv_events": air.events, "received": dict(air.received), "collided": dict(air.collided),
                "below_sensitivity": dict(air.below_sensitivity), "out_of_range": dict(air.out_of_range),
                "datagrams": air.datagrams, "datagram_errors": air.datagram_errors},
        "energy": energy,
        "battery_life_years": life,
        "cell": {"name": cell.name, "nominal_ah": cell.nominal_ah, "usable_fraction": cell.usable_fraction,
                 "self_discharge_per_year": cell.self_discharge_per_year},
        "assumptions": {
            "firmware_cpu_ms_per_cycle": sc.firmware_cpu_ms,
            "ble_init_ms": {n.board: n.ble_init_ms for n in sorted(nodes, key=lambda n: n.board)},
            "radio": {k: getattr(RadioParams(**sc.radio), k) for k in RadioParams.__dataclass_fields__},
            "boards": sorted({n.board for n in nodes}),
        },
        "world": world,
        "firmware_errors": dict(sorted(errors.items())),
        "resets": dict(sorted(resets.items())),
        "hung_nodes": sum(1 for n in nodes if n.hung),
        "console_lines": sum(n.console_lines for n in nodes),
        "flash_writes_per_node": _r(sum(n.flash_writes for n in nodes) / max(1, len(nodes)), 2),
        "decode_errors": dict(sorted(decode_errors.items())),
    }


def frame_counts(nodes: list[NodeOutcome], frames: list[FrameOutcome]) -> dict[str, Any]:
    """The summary's "frames": per kind and in total, frames sent and what became of them
    (``fate``; lost at the gateway boundary counted beside it), per kind by type and how far
    their readings are from the world's truth."""
    kind_of = {n.index: n.kind for n in nodes}
    kinds = sorted({n.kind for n in nodes})
    per_kind: dict[str, dict[str, Any]] = {}
    for k in kinds:
        per_kind[k] = {"sent": 0, "lost_on_air": 0, "heard": 0, "serial_unacked": 0, "lost_at_gateway": 0,
                       "by_type": Counter(), "check": {"n": 0, "agree": 0, "abs_err": 0.0}}
    for f in frames:
        kind = kind_of[f.node]
        pk = per_kind[kind]
        pk["sent"] += 1
        pk["lost_at_gateway"] += f.lost_at_boundary
        pk["by_type"][TYPE_NAMES.get(f.ftype, str(f.ftype)) if f.ftype >= 0 else "undecodable"] += 1
        pk[fate(f.transport, f.heard, f.acked)] += 1
        _check(kind, pk["check"], f.truth, f.readings)
    frames_out: dict[str, Any] = {}
    tot = Counter[str]()
    for k in kinds:
        pk = per_kind[k]
        chk = pk.pop("check")
        pk["by_type"] = dict(sorted(pk["by_type"].items()))
        if chk["n"]:
            pk["truth_check"] = ({"frames": chk["n"], "agree": chk["agree"], "share": _r(chk["agree"] / chk["n"], 4)}
                                 if k == "parking" else
                                 {"frames": chk["n"], "mean_abs_error": _r(chk["abs_err"] / chk["n"], 2),
                                  "unit": "pct" if k == "bin" else "l"})
        frames_out[k] = pk
        for field in ("sent", "lost_on_air", "heard", "serial_unacked", "lost_at_gateway"):
            tot[field] += pk[field]
    frames_out["total"] = dict(tot)
    return frames_out


def _check(kind: str, chk: dict[str, Any], truth: dict[str, Any], readings: Readings) -> None:
    """How far the frames' readings are from the world's truth at the time they were sent."""
    if kind == "parking" and 0 in readings:
        chk["n"] += 1
        chk["agree"] += int(bool(readings[0]) == bool(truth["occupied"]))
    elif kind == "bin" and 2 in readings:
        chk["n"] += 1
        chk["abs_err"] += abs(float(readings[2]) - min(100.0, max(0.0, truth["fill_pct"])))
    elif kind == "water" and 3 in readings:
        chk["n"] += 1
        chk["abs_err"] += abs(float(readings[3]) - truth["volume_l"])
