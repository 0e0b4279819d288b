"""A district from its scenario: each node with its board, keys, world, parts and config, and
the faults the scenario schedules.

Everything a node is made of is drawn from streams named after the seed and the node
(simulator/rng.py), never from the order nodes are built in, so a shard that builds every n-th
node (``shard=(k, n)``) builds each one exactly as a whole run does.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simulator import board_flash
from simulator import scenario as scenario_mod
from simulator.bins import Bin, BinParams
from simulator.devices import LIS3MDL, VL53L1X, ConstWire, Echo, LIS3MDLIntWire, PulseWire
from simulator.energy import load_board
from simulator.node import SimNode
from simulator.parking import ParkingParams, ParkingSpace
from simulator.rng import stream
from simulator.scenario import KIND_CODES, Fault, Scenario
from simulator.serial_link import LoopbackLink, PtyLink
from simulator.water import Household, WaterParams
from urbansense.compat import DATACLASS_SLOTS
from urbansense.wire.node_config import SECTIONS

if TYPE_CHECKING:
    from simulator.sim import Simulation


@dataclass(frozen=True, **DATACLASS_SLOTS)
class NodeInfo:
    """A node as the gateway needs it (registry entry)."""

    name: str
    node_id: int
    kind: str
    key_hex: str
    transport: str
    gateway: str | None
    serial_path: str | None


def load_scenario(scenario: str | Path | dict[str, Any] | Scenario, seed: int | None = None,
                  nodes: int | None = None) -> Scenario:
    """A scenario from a file, a dict or as is; ``seed`` and ``nodes`` override its own."""
    if isinstance(scenario, Scenario):
        sc = scenario
    elif isinstance(scenario, dict):
        sc = scenario_mod.from_dict(scenario)
    else:
        sc = scenario_mod.load(scenario)
    if seed is not None:
        sc.seed = seed
    if nodes is not None:
        _scale(sc, nodes)
    return sc


def _scale(sc: Scenario, nodes: int) -> None:
    total = sc.node_count()
    if total == 0:
        return
    for g in sc.groups:
        g.count = max(1, round(g.count * nodes / total)) if g.count else 0


def node_key(seed: int, node_id: int) -> bytes:
    return hashlib.sha256(f"urbansense-sim:{seed}:{node_id}".encode()).digest()[:16]


class DistrictBuilder:
    """Adds a simulation's nodes (its shard's, if it is one) and schedules its faults."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self._boards: dict[str, tuple[dict[str, Any], Any]] = {}
        self._board_json: dict[str, bytes] = {}

    def _board(self, name: str) -> tuple[dict[str, Any], Any]:
        if name not in self._boards:
            self._boards[name] = load_board(name, self.sim.boards_dir)
        return self._boards[name]

    def build(self) -> None:
        sim = self.sim
        counters: Counter[str] = Counter()
        index = 0
        for gi, grp in enumerate(sim.scenario.groups):
            for _ in range(grp.count):
                counters[grp.kind] += 1
                k = counters[grp.kind]
                node_id = (KIND_CODES[grp.kind] << 24) | k
                i = index
                index += 1
                if sim.shard is not None and i % sim.shard[1] != sim.shard[0]:
                    continue
                self._add_node(i, gi, grp, node_id, f"{grp.kind}-{k:05d}")

    def _add_node(self, index: int, gi: int, grp: scenario_mod.Group, node_id: int, name: str) -> None:
        sim = self.sim
        board, profile = self._board(grp.board)
        key = node_key(sim.seed, node_id)
        flash = None
        if grp.flash is not None:  # a provisioned board's own files (simulator/board_flash.py)
            flash = board_flash.load(Path(grp.flash))
            board_flash.check_firmware(flash)
            board, node_id, key = flash.board, flash.node_id, flash.key
        place = stream(f"{sim.seed}:{node_id}:place")
        x0, y0, x1, y1 = grp.area
        pos = (place.uniform(x0, x1), place.uniform(y0, y1))
        node = SimNode(sim, index, name, grp.kind, node_id, key, grp.transport, board, profile,
                       sim.cell, pos, sim.seed, sim.fw)
        node.group = gi
        node.link_db = sim.air.link_means(pos, node.rng_air)
        pins = board.get("pins", {})
        if "sensor_power" in pins:
            node.power_pin = int(pins["sensor_power"])
            node.i2c_powered = False  # off until the firmware switches it on
        cfg: dict[str, Any] = {
            "node_id": node_id, "key": key.hex(), "kind": grp.kind, "board": grp.board,
            "transport": grp.transport, **{section: {} for section in SECTIONS},
        }
        if flash is not None:  # the world reads its settings; the node gets the file as it is
            cfg.update(json.loads(flash.config_json))
            for section in SECTIONS:
                cfg[section] = dict(cfg.get(section) or {})
        for sect, val in grp.config.items():
            if isinstance(val, dict) and isinstance(cfg.get(sect), dict):
                cfg[sect].update(val)
            else:
                cfg[sect] = val
        wr = node.rng_world
        if grp.kind == "parking":
            space = ParkingSpace(wr, ParkingParams(**grp.world), sim.t_day0, noise_rng=node.rng_hw)
            node.world = space
            mag = LIS3MDL(node, space, node.rng_hw, int(board.get("lis3mdl_addr", 0x1C)))
            node.i2c_devices[mag.address] = mag
            node.wires[int(pins.get("mag_int", 4))] = LIS3MDLIntWire(mag)
            node.sensor_active_ua = profile.current_ua("lis3mdl_active_ua", 40.0)
        elif grp.kind == "bin":
            bp = BinParams(**grp.world)
            b = Bin(wr, bp, sim.t_day0, noise_rng=node.rng_hw)
            node.world = b
            cal = cfg["calibration"]
            cal.setdefault("empty_mm", bp.empty_mm)
            cal.setdefault("full_mm", bp.full_mm)
            cfg.setdefault("sensor", grp.sensor)
            if cfg["sensor"] == "vl53l1x":
                tof = VL53L1X(node, b, node.rng_hw)
                node.i2c_devices[tof.address] = tof
                node.sensor_active_ua = profile.current_ua("vl53l1x_ranging_ma", 16000.0)
            else:
                node.echo[int(pins.get("us_echo", 19))] = Echo(node, b)
                node.sensor_active_ua = profile.current_ua("jsnsr04t_active_ma", 8000.0)
        else:
            wp = WaterParams(**grp.world)
            h = Household(wr, wp, sim.t_day0)
            node.world = h
            cal = cfg["calibration"]
            cal.setdefault("ml_per_pulse", 1000)
            active = int(cal.get("pulse_active_level", 0))
            node.wires[int(pins.get("pulse", 25))] = PulseWire(h, cal["ml_per_pulse"] / 1000.0, active == 0)
            if "tamper" in pins:
                node.wires[int(pins["tamper"])] = ConstWire(0)
        if "battery_adc" in pins:
            node.battery_pin = int(pins["battery_adc"])
            div = board.get("battery_divider", {})
            node.battery_ratio = (div.get("r_top_ohm", 1) + div.get("r_bottom_ohm", 1)) / div.get("r_bottom_ohm", 1)
        if flash is not None:
            node.files["config.json"] = flash.config_json
            node.files["board.json"] = flash.board_json
        else:
            node.files["config.json"] = json.dumps(cfg).encode()
            bj = self._board_json.get(grp.board)
            if bj is None:  # the same file on every node of a board
                bj = self._board_json[grp.board] = json.dumps(board).encode()
            node.files["board.json"] = bj
        node.initial_used_uah = grp.initial_used_fraction * sim.cell.nominal_ah * 1e6
        gw = grp.gateway or sim.gateways[0].gw_id
        node.gw_id = gw
        if grp.transport == "serial":
            if sim.serial_mode == "pty":
                node.serial = PtyLink(node, gw, grp.line_noise_ber, sim.serial_wall_factor)
            else:
                node.serial = LoopbackLink(node, gw, grp.line_noise_ber)
        sim.nodes.append(node)
        sim.by_name[name] = node
        # Installation: nodes power up spread over the first minute.
        sim.engine.at(node.rng_hw.uniform(0.0, 60.0), node._event(1, 0))

    def schedule_faults(self) -> None:
        sim = self.sim
        rng = stream(f"{sim.seed}:faults")
        total = sim.scenario.node_count()
        for f in sim.scenario.faults:
            if f.kind == "gateway_out_of_range":
                g = sim.gateways[sim.gw_index[f.gateway or sim.gateways[0].gw_id]]
                g.out_of_range.append((f.at_s, f.until_s if f.until_s is not None else math.inf))
                continue
            for node in self._fault_targets(f, rng, total):
                sim.engine.at(f.at_s, _fault_action(node, f))

    def _fault_targets(self, f: Fault, rng: random.Random, total: int) -> list[SimNode]:
        sim = self.sim
        if f.node is not None:
            n = sim.by_name.get(f.node)
            return [n] if n is not None else []
        if f.group is not None:
            return [n for n in sim.nodes if getattr(n, "group", None) == f.group]
        share = 1.0 if f.fraction is None else f.fraction
        chosen = {i for i in range(total) if rng.random() < share}
        return [n for n in sim.nodes if n.index in chosen]


def _fault_action(node: SimNode, f: Fault) -> Any:
    def act(t: float) -> None:
        node.fault(t, f.kind, f.value)

    return act
