"""A district: nodes running the real firmware, their world, the air, the ground truth."""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import pickle
import random
import subprocess
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import IO, Any, Final, Union

import numpy as np

from simulator import scenario as scenario_mod
from simulator.air import AirModel, Gateway, RadioParams
from simulator.board_main import BoardMain
from simulator.devices import LIS3MDL, VL53L1X, ConstWire, Echo, LIS3MDLIntWire, PulseWire
from simulator.energy import BOARDS_DIR, CATEGORIES, CELLS, load_board
from simulator.engine import Engine
from simulator.firmware_loader import load_firmware
from simulator.fw_codec import FirmwareCodec, FrameDecodeError
from simulator.node import Console, SimNode
from simulator.rng import stream
from simulator.scenario import KIND_CODES, Fault, Scenario
from simulator.serial_link import LoopbackLink, PtyLink
from simulator.world import Bin, BinParams, Household, ParkingParams, ParkingSpace, WaterParams
from urbansense.compat import DATACLASS_SLOTS
from urbansense.wire.errors import FrameError
from urbansense.wire.node_config import SECTIONS
from urbansense.wire.protocol import TYPE_NAMES, NodeKeys, parse_header, verify_uplink
from urbansense.wire.quantities import QUANTITIES

ROOT: Final = Path(__file__).resolve().parents[1]
DEFAULT_BOARD: Final = "city-wroom32e"
SETTLE_EVERY_S: Final = 600.0  # bounds the memory of pending air events in fast runs
REALTIME_TICK_S: Final = 0.25  # in realtime runs adverts reach the gateway this often
_T_COMPANY_DEFAULT: Final = 0xFFFF
# A frame is written to the truth file once every advert of its burst is settled.
TRUTH_MARGIN_S: Final = 10.0
HORIZON_MARGIN_S: Final = 86400.0  # pin wakes are searched this far past the end of a run


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


def node_key(seed: int, node_id: int) -> bytes:
    return hashlib.sha256(f"urbansense-sim:{seed}:{node_id}".encode()).digest()[:16]


class Frame:
    """One frame a node sent (a burst of adverts, or serial retransmissions, count once)."""

    __slots__ = (
        "acked",
        "adverts",
        "company",
        "datagram_errors",
        "decode_error",
        "delivered",
        "fcnt",
        "ftype",
        "heard",
        "node",
        "payload",
        "readings",
        "rssi",
        "t",
        "transport",
        "truth",
    )

    def __init__(self, node: int, fcnt: int, ftype: int, t: float, transport: str,
                 readings: dict[int, int | bool], truth: dict[str, Any]) -> None:
        self.node = node
        self.fcnt = fcnt
        self.ftype = ftype
        self.t = t
        self.transport = transport
        self.heard = 0  # bitmask of gateway indexes that received it over the air
        # bitmask of gateways in the loop that were handed it (a datagram their socket took,
        # bytes written to their serial port): heard but not delivered = lost at the boundary
        self.delivered = 0
        self.datagram_errors = 0
        self.decode_error: str | None = None  # the firmware's codec cannot open it (still sent)
        self.adverts = 0
        self.readings = readings
        self.truth = truth
        self.acked = False
        self.company: int | None = _T_COMPANY_DEFAULT  # None: not manufacturer-specific data
        self.payload = b""
        self.rssi: dict[int, float] = {}


class Simulation:
    """Build with a scenario (path, dict or Scenario); run with run_until / run."""

    def __init__(self, scenario: str | Path | dict[str, Any] | Scenario, *, seed: int | None = None,
                 nodes: int | None = None, serial: str = "loopback", firmware: ModuleType | None = None,
                 shard: tuple[int, int] | None = None, serial_wall_factor: float = 1.0,
                 boards_dir: Path = BOARDS_DIR) -> None:
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
        self.scenario = sc
        self.seed = sc.seed
        self.serial_mode = serial
        # pty: wall seconds a node's ack wait may block per simulated second (a real gateway
        # needs real time to answer; the wait ends as soon as the ack is there)
        self.serial_wall_factor = serial_wall_factor
        self.shard = shard
        self.boards_dir = Path(boards_dir)
        self.fw = firmware if firmware is not None else load_firmware()
        self.board_main = BoardMain(self.fw)
        self.engine = Engine()
        self.console = Console()
        self.epoch0 = float(sc.start_epoch)
        self.t_day0 = float(sc.start_epoch % 86400)
        self.horizon_s = sc.duration_s + HORIZON_MARGIN_S
        self.cell = CELLS[sc.cell]
        self.firmware_cpu_s = sc.firmware_cpu_ms / 1000.0
        rp = RadioParams(**sc.radio)
        self.gateways = [
            Gateway(str(g.get("id", f"gw-{i + 1}")), float(g.get("x", 0.0)), float(g.get("y", 0.0)),
                    g.get("sim_socket"))
            for i, g in enumerate(sc.gateways)
        ]
        self.gw_index = {g.gw_id: i for i, g in enumerate(self.gateways)}
        self.air = AirModel(self.gateways, rp)
        self.nodes: list[SimNode] = []
        self.by_name: dict[str, SimNode] = {}
        self.frames: list[Frame] = []
        self._open_frames: dict[int, int] = {}  # node index -> frame idx of the last frame
        self._keys: dict[int, NodeKeys] = {}
        self._board_json: dict[str, bytes] = {}  # the loopback acker's (it stands in for a gateway)
        self.codec = FirmwareCodec()
        self._serial_frames: dict[tuple[int, int], int] = {}
        self._serial_payloads: dict[tuple[int, bytes], int] = {}
        self.decode_errors: Counter[str] = Counter()
        self.truth_out: IO[str] | None = None
        self.last_summary: dict[str, Any] | None = None
        self._held: list[Frame] = []
        self._written = 0
        self._boards: dict[str, tuple[dict[str, Any], Any]] = {}
        self._build()
        self._schedule_faults()
        self._tick_chain = 0
        self._start_settle_ticks(SETTLE_EVERY_S)

    # ------------------------------------------------------------------ building
    def _board(self, name: str) -> tuple[dict[str, Any], Any]:
        if name not in self._boards:
            self._boards[name] = load_board(name, self.boards_dir)
        return self._boards[name]

    def _build(self) -> None:
        sc = self.scenario
        counters: Counter[str] = Counter()
        index = 0
        for gi, grp in enumerate(sc.groups):
            for _ in range(grp.count):
                counters[grp.kind] += 1
                k = counters[grp.kind]
                node_id = (KIND_CODES[grp.kind] << 24) | k
                i = index
                index += 1
                if self.shard is not None and i % self.shard[1] != self.shard[0]:
                    continue
                self._add_node(i, gi, grp, node_id, f"{grp.kind}-{k:05d}")

    def _add_node(self, index: int, gi: int, grp: scenario_mod.Group, node_id: int, name: str) -> None:
        board, profile = self._board(grp.board)
        place = stream(f"{self.seed}:{node_id}:place")
        x0, y0, x1, y1 = grp.area
        pos = (place.uniform(x0, x1), place.uniform(y0, y1))
        key = node_key(self.seed, node_id)
        node = SimNode(self, index, name, grp.kind, node_id, key, grp.transport, board, profile,
                       self.cell, pos, self.seed, self.fw)
        node.group = gi
        node.link_db = self.air.link_means(pos, node.rng_air)
        pins = board.get("pins", {})
        if "sensor_power" in pins:
            node.power_pin = int(pins["sensor_power"])
            node.i2c_powered = False  # off until the firmware switches it on
        cfg: dict[str, Any] = {
            "node_id": node_id, "key": key.hex(), "kind": grp.kind, "board": grp.board,
            "transport": grp.transport, **{section: {} for section in SECTIONS},
        }
        for sect, val in grp.config.items():
            if isinstance(val, dict) and isinstance(cfg.get(sect), dict):
                cfg[sect].update(val)
            else:
                cfg[sect] = val
        wr = node.rng_world
        if grp.kind == "parking":
            space = ParkingSpace(wr, ParkingParams(**grp.world), self.t_day0, noise_rng=node.rng_hw)
            node.world = space
            mag = LIS3MDL(node, space, node.rng_hw, int(board.get("lis3mdl_addr", 0x1C)))
            node.i2c_devices[mag.address] = mag
            node.wires[int(pins.get("mag_int", 4))] = LIS3MDLIntWire(mag)
            node.sensor_active_ua = profile.current_ua("lis3mdl_active_ua", 40.0)
        elif grp.kind == "bin":
            bp = BinParams(**grp.world)
            b = Bin(wr, bp, self.t_day0, noise_rng=node.rng_hw)
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
            h = Household(wr, wp, self.t_day0)
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
        node.files["config.json"] = json.dumps(cfg).encode()
        bj = self._board_json.get(grp.board)
        if bj is None:  # the same file on every node of a board
            bj = self._board_json[grp.board] = json.dumps(board).encode()
        node.files["board.json"] = bj
        node.initial_used_uah = grp.initial_used_fraction * self.cell.nominal_ah * 1e6
        gw = grp.gateway or self.gateways[0].gw_id
        node.gw_id = gw
        if grp.transport == "serial":
            if self.serial_mode == "pty":
                node.serial = PtyLink(node, gw, grp.line_noise_ber, self.serial_wall_factor)
            else:
                node.serial = LoopbackLink(node, gw, grp.line_noise_ber)
        self.nodes.append(node)
        self.by_name[name] = node
        # Installation: nodes power up spread over the first minute.
        self.engine.at(node.rng_hw.uniform(0.0, 60.0), node._event(1, 0))

    def _schedule_faults(self) -> None:
        rng = stream(f"{self.seed}:faults")
        total = self.scenario.node_count()
        for f in self.scenario.faults:
            if f.kind == "gateway_out_of_range":
                g = self.gateways[self.gw_index[f.gateway or self.gateways[0].gw_id]]
                g.out_of_range.append((f.at_s, f.until_s if f.until_s is not None else math.inf))
                continue
            targets = self._fault_targets(f, rng, total)
            for node in targets:
                self.engine.at(f.at_s, _fault_action(node, f))

    def _fault_targets(self, f: Fault, rng: random.Random, total: int) -> list[SimNode]:
        if f.node is not None:
            n = self.by_name.get(f.node)
            return [n] if n is not None else []
        if f.group is not None:
            return [n for n in self.nodes if getattr(n, "group", None) == f.group]
        share = 1.0 if f.fraction is None else f.fraction
        chosen = {i for i in range(total) if rng.random() < share}
        return [n for n in self.nodes if n.index in chosen]

    # ------------------------------------------------------------------ frames (ground truth)
    def _truth_at(self, node: SimNode, t: float) -> dict[str, Any]:
        w = node.world
        if node.kind == "parking":
            return {"occupied": w.occupied(t)}
        if node.kind == "bin":
            return {"fill_pct": round(w.fill_pct(t), 2), "distance_mm": round(w.distance_mm(t), 1)}
        return {"volume_l": round(w.volume_l(t), 3), "flow_lph": round(w.flow_lph(t), 1)}

    def _decode(self, node: SimNode, frame: bytes) -> tuple[int, int, dict[int, int | bool]] | str:
        """-> (fcnt, type, readings) by the firmware's own codec, or the reason it failed."""
        try:
            fcnt, ftype, readings = self.codec.decode(node.key, node.node_id, frame, node.last_fcnt)
        except FrameDecodeError as exc:
            self.decode_errors[exc.reason] += 1
            return exc.reason
        node.last_fcnt = fcnt
        return fcnt, ftype, readings

    def _new_frame(self, node: SimNode, t: float, transport: str, frame: bytes,
                   dec: tuple[int, int, dict[int, int | bool]] | str) -> Frame:
        if isinstance(dec, str):
            fr = Frame(node.index, -1, -1, t, transport, {}, self._truth_at(node, t))
            fr.decode_error = dec
        else:
            fcnt, ftype, readings = dec
            fr = Frame(node.index, fcnt, ftype, t, transport, readings, self._truth_at(node, t))
        fr.payload = frame
        self.frames.append(fr)
        return fr

    def register_ble_frame(self, node: SimNode, t: float, adv: bytes) -> int:
        """A gap_advertise payload -> frame index. Every advert goes on air; one the
        firmware's codec cannot open is in the truth file with its ``decode_error``."""
        last = self._open_frames.get(node.index)
        if len(adv) < 4 or adv[1] != 0xFF or adv[0] + 1 > len(adv):
            company, frame = None, bytes(adv)
            dec: tuple[int, int, dict[int, int | bool]] | str = "not_manufacturer_data"
        else:
            company, frame = adv[2] | (adv[3] << 8), bytes(adv[4 : adv[0] + 1])
            dec = ""
        if last is not None and self.frames[last].payload == frame and self.frames[last].company == company:
            return last  # the same frame advertised again
        if company is None:
            self.decode_errors["not_manufacturer_data"] += 1
        else:
            dec = self._decode(node, frame)
        fr = self._new_frame(node, t, "ble", frame, dec)
        fr.company = company
        idx = len(self.frames) - 1
        self._open_frames[node.index] = idx
        return idx

    def serial_fcnt(self, node: SimNode, frame: bytes) -> int | None:
        """What a gateway would infer as the full counter (for the loopback acker)."""
        try:
            hdr = parse_header(frame)
            keys = self._keys.get(node.index)
            if keys is None:  # serial nodes only: derived on first use
                keys = self._keys[node.index] = NodeKeys(node.key)
            up = verify_uplink(keys, frame, hdr, node.last_fcnt)
        except FrameError:
            return None
        return up.fcnt

    def register_serial_frame(self, node: SimNode, t: float, frame: bytes, gw_id: str) -> int:
        """A frame the node wrote to its UART -> frame index (retransmissions count once)."""
        key = (node.index, frame)
        idx = self._serial_payloads.get(key)
        if idx is None:
            fr = self._new_frame(node, t, "serial", frame, self._decode(node, frame))
            idx = len(self.frames) - 1
            self._serial_payloads[key] = idx
            if fr.decode_error is None:
                self._serial_frames[(node.index, fr.fcnt)] = idx
        self.frames[idx].adverts += 1  # transmissions
        return idx

    def mark_serial_delivered(self, node: SimNode, frame_idx: int) -> None:
        """The frame's bytes went into the gateway's serial port."""
        self.frames[frame_idx].delivered |= 1 << self.gw_index.get(node.gw_id, 0)

    def mark_acked(self, node: SimNode, fcnt: int) -> None:
        idx = self._serial_frames.get((node.index, fcnt))
        if idx is not None:
            fr = self.frames[idx]
            fr.acked = True
            fr.heard |= 1 << self.gw_index.get(getattr(node, "gw_id", ""), 0)

    def _deliver(self, frame_idx: int, gi: int, t: float, rssi: float) -> None:
        fr = self.frames[frame_idx]
        fr.heard |= 1 << gi
        if rssi > fr.rssi.get(gi, -999.0):
            fr.rssi[gi] = rssi
        if self.gateways[gi].sim_socket is not None:
            node = self.nodes_by_index[fr.node]
            addr = ":".join(f"{b:02X}" for b in node.ble_address_bytes())
            mfr = {} if fr.company is None else {fr.company: fr.payload}
            if self.air.send_datagram(gi, addr, rssi, mfr):
                fr.delivered |= 1 << gi
            else:
                fr.datagram_errors += 1

    @property
    def nodes_by_index(self) -> dict[int, SimNode]:
        cache: dict[int, SimNode] | None = getattr(self, "_nbi", None)
        if cache is None or len(cache) != len(self.nodes):
            cache = {n.index: n for n in self.nodes}
            self._nbi = cache
        return cache

    def _count_adverts(self) -> None:
        return None

    # ------------------------------------------------------------------ running
    def _start_settle_ticks(self, first_s: float) -> None:
        """(Re)start the periodic settling of the air; an older chain of ticks stops."""
        self._tick_chain += 1
        chain = self._tick_chain

        def tick(t: float) -> None:
            if chain != self._tick_chain:
                return
            self.settle(t - 0.001)
            step = REALTIME_TICK_S if self.engine.realtime_speed is not None else SETTLE_EVERY_S
            self.engine.at(t + step, tick)

        self.engine.at(self.engine.now + first_s, tick)

    def settle(self, cut: float) -> None:
        if self.shard is not None:
            return  # the parent settles the merged air
        self.air.settle(cut, self._deliver)
        self._flush_truth(cut)

    def run_until(self, t_sim: float) -> None:
        """Advance the virtual clock to ``t_sim`` seconds (events up to it have run)."""
        if math.isfinite(t_sim):  # pin wakes are searched to the horizon: past the run's end
            self.horizon_s = max(self.horizon_s, t_sim + HORIZON_MARGIN_S)
        with self.board_main.batch():
            self.engine.run_until(t_sim)
        self.settle(t_sim - self.air.max_air - 0.5)

    def run(self, duration_s: float | None = None) -> dict[str, Any]:
        d = self.scenario.duration_s if duration_s is None else duration_s
        self.run_until(d)
        if self.engine.stop_requested:
            d = max(self.engine.now, 1e-9)
        self.finish(d)
        return self.summary(d)

    def run_realtime(self, duration_s: float | None = None, speed: float = 60.0) -> dict[str, Any]:
        """Pace the run at ``speed`` x wall time (for a gateway in the loop)."""
        self.engine.set_realtime(speed)
        self._start_settle_ticks(REALTIME_TICK_S)  # adverts reach the gateways from the start
        return self.run(duration_s)

    def start_realtime(self, duration_s: float | None = None, speed: float = 60.0) -> threading.Thread:
        """Run paced in a background thread (for the demo); ``stop()`` ends it early.

        The summary is then in ``self.last_summary`` once the thread has finished.
        """

        def target() -> None:
            self.last_summary = self.run_realtime(duration_s, speed)

        th = threading.Thread(target=target, name="simulator", daemon=True)
        th.start()
        return th

    def stop(self) -> None:
        """Ask a running (realtime) run to end at the next event; the summary covers up to then."""
        self.engine.stop_requested = True

    def finish(self, t_end: float) -> None:
        for n in self.nodes:
            n.ble_stop_adv()
        self.settle(math.inf)
        self.t_end = t_end

    def close(self) -> None:
        if self.truth_out is not None and not self.truth_out.closed:
            self.truth_out.close()
        self.air.close()
        for n in self.nodes:
            if n.serial is not None:
                n.serial.close()

    # ------------------------------------------------------------------ registry
    def registry(self) -> list[NodeInfo]:
        return [
            NodeInfo(n.name, n.node_id, n.kind, n.key.hex(), n.transport,
                     getattr(n, "gw_id", None), getattr(n.serial, "slave_path", None))
            for n in self.nodes
        ]

    def serial_ports(self) -> dict[str, str]:
        """node name -> pty slave path (only with serial="pty")."""
        return {n.name: n.serial.slave_path for n in self.nodes if isinstance(n.serial, PtyLink)}

    # ------------------------------------------------------------------ truth file
    def open_truth(self, path: str | Path) -> None:
        self.truth_out = Path(path).open("w")  # noqa: SIM115 - closed by the caller / close()

    def frame_record(self, fr: Frame) -> dict[str, Any]:
        """One truth line. ``readings`` are what the firmware put into the frame (its own
        codec); ``heard_by`` the gateways that received it on air, ``delivered_to`` those in
        the loop that were handed it, so a loss on air and a loss at the boundary differ."""
        node = self.nodes_by_index[fr.node]
        gws = self.gateways
        heard = [g.gw_id for i, g in enumerate(gws) if fr.heard >> i & 1]
        heard_in_loop = [i for i in self._in_loop if fr.heard >> i & 1] if fr.transport == "ble" else []
        rec: dict[str, Any] = {
            "node_id": node.node_id,
            "node": node.name,
            "kind": node.kind,
            "fcnt": None if fr.decode_error else fr.fcnt,
            "ftype": None if fr.decode_error else TYPE_NAMES.get(fr.ftype, str(fr.ftype)),
            "readings": {QUANTITIES[k].field if k in QUANTITIES else str(k): v for k, v in sorted(fr.readings.items())},
            "t_sim": round(fr.t, 6),
            "transport": fr.transport,
            "heard_by": heard,
            "lost_on_air": fr.transport == "ble" and not heard,
            "delivered_to": [g.gw_id for i, g in enumerate(gws) if fr.delivered >> i & 1],
            "undelivered_to": [gws[i].gw_id for i in heard_in_loop if not fr.delivered >> i & 1],
            "lost_at_gateway_boundary": self._lost_at_boundary(fr),
            "transmissions": fr.adverts,
            "truth": fr.truth,
            "frame_hex": fr.payload.hex(),
        }
        if fr.decode_error is not None:
            rec["decode_error"] = fr.decode_error
        if fr.transport == "serial":
            rec["acked"] = fr.acked
        else:
            rec["rssi"] = {gws[i].gw_id: round(v, 1) for i, v in sorted(fr.rssi.items())}
            rec["datagram_errors"] = fr.datagram_errors
        return rec

    @property
    def _in_loop(self) -> list[int]:
        """Indexes of the gateways whose bleak backend is in the loop (a socket to feed)."""
        return [i for i, g in enumerate(self.gateways) if g.sim_socket is not None]

    def _lost_at_boundary(self, fr: Frame) -> bool:
        """Heard on air by a gateway in the loop, yet handed to none of them."""
        if fr.transport != "ble" or fr.delivered:
            return False
        return any(fr.heard >> i & 1 for i in self._in_loop)

    def _flush_truth(self, cut: float) -> None:
        """Write frames whose fate is known: BLE bursts over and settled; serial frames once
        acked (a retransmission may be acked hours later), the rest when the run ends."""
        out = self.truth_out
        if out is None:
            return
        final = math.isinf(cut)
        still: list[Frame] = []
        for fr in self._held:
            if fr.acked or final:
                out.write(json.dumps(self.frame_record(fr), sort_keys=True) + "\n")
            else:
                still.append(fr)
        self._held = still
        frames = self.frames
        while self._written < len(frames):
            fr = frames[self._written]
            if not final and fr.t >= cut - TRUTH_MARGIN_S:
                break
            if fr.transport == "serial" and not fr.acked and not final:
                self._held.append(fr)
            else:
                out.write(json.dumps(self.frame_record(fr), sort_keys=True) + "\n")
            self._written += 1
        if final:
            out.flush()

    # ------------------------------------------------------------------ summary
    def node_summaries(self, t_end: float) -> list[dict[str, Any]]:
        out = []
        for n in self.nodes:
            uc = n.charge_to(t_end)
            avg_ua = sum(uc.values()) / t_end if t_end > 0 else 0.0
            out.append({
                "index": n.index, "kind": n.kind, "board": n.profile.board, "uc": uc,
                "ble_init_ms": n.profile.ble_init_ms,
                "static_ua": n.profile.static_ua,
                "avg_ua": avg_ua + n.profile.static_ua, "cycles": n.cycles,
                "errors": dict(n.errors), "resets": {str(k): v for k, v in n.resets.items()},
                "hung": n.hung, "flash_writes": n.flash_writes, "console_lines": n.console_lines,
                "world": _world_stats(n, t_end),
            })
        return out

    def summary(self, t_end: float | None = None) -> dict[str, Any]:
        t = self.engine.now if t_end is None else t_end
        return build_summary(self.scenario, self.cell, self.gateways, self.node_summaries(t),
                             [_frame_tuple(f, self._lost_at_boundary(f)) for f in self.frames],
                             self.air.stats, t,
                             dict(self.decode_errors))


def _fault_action(node: SimNode, f: Fault) -> Any:
    def act(t: float) -> None:
        node.fault(t, f.kind, f.value)

    return act


def _scale(sc: Scenario, nodes: int) -> None:
    total = sc.node_count()
    if total == 0:
        return
    for g in sc.groups:
        g.count = max(1, round(g.count * nodes / total)) if g.count else 0


def _world_stats(n: SimNode, t_end: float) -> dict[str, float]:
    w = n.world
    if n.kind == "parking":
        return {"arrivals": float(w.arrivals_between(0.0, t_end))}
    if n.kind == "bin":
        return {"collections": float(sum(1 for c in w.collections if c <= t_end)),
                "fill_pct_end": w.fill_pct(t_end)}
    return {"volume_l": w.volume_l(t_end), "leaks": float(len([x for x in w.leaks if x <= t_end])),
            "bursts": float(len([x for x in w.bursts if x <= t_end]))}


FrameTuple = tuple[int, int, str, int, bool, dict[str, Any], dict[int, Union[int, bool]], bool]  # noqa: UP007 - evaluated at run time on PyPy 3.9


def _frame_tuple(f: Frame, lost_at_boundary: bool = False) -> FrameTuple:
    return (f.node, f.ftype, f.transport, f.heard, f.acked, f.truth, f.readings, lost_at_boundary)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    i = min(len(s) - 1, max(0, round(q * (len(s) - 1))))
    return s[i]


def _r(x: float, nd: int = 3) -> float:
    return float(round(x, nd))


def build_summary(sc: Scenario, cell: Any, gateways: list[Gateway], nodes: list[dict[str, Any]],
                  frames: list[FrameTuple],
                  air: Any, t_end: float, decode_errors: dict[str, int]) -> dict[str, Any]:
    kind_of = {n["index"]: n["kind"] for n in nodes}
    kinds = sorted({n["kind"] for n in nodes})
    per_kind: dict[str, dict[str, Any]] = {}
    for k in kinds:
        per_kind[k] = {"sent": 0, "lost_on_air": 0, "heard": 0, "serial_unacked": 0, "lost_at_gateway": 0,
                       "by_type": Counter(), "check": {"n": 0, "agree": 0, "abs_err": 0.0}}
    for node_idx, ftype, transport, heard, acked, truth, readings, boundary in frames:
        pk = per_kind[kind_of[node_idx]]
        pk["sent"] += 1
        pk["lost_at_gateway"] += boundary
        pk["by_type"][TYPE_NAMES.get(ftype, str(ftype)) if ftype >= 0 else "undecodable"] += 1
        if transport == "ble":
            if heard:
                pk["heard"] += 1
            else:
                pk["lost_on_air"] += 1
        elif acked:
            pk["heard"] += 1
        else:
            pk["serial_unacked"] += 1
        _check(kind_of[node_idx], pk["check"], truth, readings)
    energy: dict[str, Any] = {}
    life: dict[str, Any] = {}
    for k in kinds:
        ns = [n for n in nodes if n["kind"] == k]
        avg = [n["avg_ua"] for n in ns]
        days = t_end / 86400.0 if t_end > 0 else 1.0
        breakdown = {c: _r(sum(n["uc"].get(c, 0.0) for n in ns) / len(ns) / days / 1000.0, 3) for c in CATEGORIES}
        # always-on board draws (regulator, battery divider): 86.4 mC/day per uA
        breakdown["static"] = _r(sum(n["static_ua"] for n in ns) / len(ns) * 86.4, 3)
        energy[k] = {
            "avg_current_ua": {"mean": _r(sum(avg) / len(avg)), "p50": _r(_pct(avg, 0.5)),
                               "p95": _r(_pct(avg, 0.95)), "max": _r(max(avg))},
            "mc_per_day_by_state": breakdown,
            "wake_cycles_per_day": _r(sum(n["cycles"] for n in ns) / len(ns) / days, 2),
        }
        years = [cell.life_years(a) for a in avg]
        life[k] = {"min": _r(min(years), 2), "p5": _r(_pct(years, 0.05), 2), "p50": _r(_pct(years, 0.5), 2),
                   "mean": _r(sum(years) / len(years), 2), "max": _r(max(years), 2)}
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
        for f in ("sent", "lost_on_air", "heard", "serial_unacked", "lost_at_gateway"):
            tot[f] += pk[f]
    frames_out["total"] = dict(tot)
    errors: Counter[str] = Counter()
    resets: Counter[str] = Counter()
    for n in nodes:
        errors.update(n["errors"])
        resets.update(n["resets"])
    world: dict[str, Any] = {}
    for k in kinds:
        ns = [n for n in nodes if n["kind"] == k]
        keys = sorted({x for n in ns for x in n["world"]})
        world[k] = {x: _r(sum(n["world"].get(x, 0.0) for n in ns) / len(ns), 2) for x in keys}
        world[k]["per_node_mean"] = True
    return {
        "scenario": sc.name,
        "seed": sc.seed,
        "duration_s": _r(t_end, 3),
        "nodes": {k: sum(1 for n in nodes if n["kind"] == k) for k in kinds},
        "wake_cycles": sum(n["cycles"] for n in nodes),
        "frames": frames_out,
        "air": {"adv_events": air.events, "received": dict(air.received), "collided": dict(air.collided),
                "below_sensitivity": dict(air.below_sensitivity), "out_of_range": dict(air.out_of_range),
                "datagrams": air.datagrams, "datagram_errors": air.datagram_errors},
        "energy": energy,
        "battery_life_years": life,
        "cell": {"name": cell.name, "nominal_ah": cell.nominal_ah, "usable_fraction": cell.usable_fraction,
                 "self_discharge_per_year": cell.self_discharge_per_year},
        "assumptions": {
            "firmware_cpu_ms_per_cycle": sc.firmware_cpu_ms,
            "ble_init_ms": {n["board"]: n["ble_init_ms"] for n in sorted(nodes, key=lambda n: n["board"])},
            "radio": {k: getattr(RadioParams(**sc.radio), k) for k in RadioParams.__dataclass_fields__},
            "boards": sorted({n["board"] for n in nodes}),
        },
        "world": world,
        "firmware_errors": dict(sorted(errors.items())),
        "resets": dict(sorted(resets.items())),
        "hung_nodes": sum(1 for n in nodes if n["hung"]),
        "console_lines": sum(n["console_lines"] for n in nodes),
        "flash_writes_per_node": _r(sum(n["flash_writes"] for n in nodes) / max(1, len(nodes)), 2),
        "decode_errors": dict(sorted(decode_errors.items())),
    }


def _check(kind: str, chk: dict[str, Any], truth: dict[str, Any], readings: dict[int, int | bool]) -> None:
    if kind == "parking" and 0 in readings:
        chk["n"] += 1
        chk["agree"] += int(bool(readings[0]) == bool(truth["occupied"]))
    elif kind == "bin" and 2 in readings:
        chk["n"] += 1
        chk["abs_err"] += abs(float(readings[2]) - min(100.0, max(0.0, truth["fill_pct"])))
    elif kind == "water" and 3 in readings:
        chk["n"] += 1
        chk["abs_err"] += abs(float(readings[3]) - truth["volume_l"])


# ---------------------------------------------------------------------- parallel runs


def _shard_worker(args: tuple[Any, int, int, int | None, float, Path]) -> dict[str, Any]:
    """One shard's run; the result holds plain Python values and bytes only, so that a
    shard run by another interpreter (PyPy, numpy 1.x) pickles back to this one."""
    sc, k, n, seed, duration, boards_dir = args
    sim = Simulation(sc, seed=seed, shard=(k, n), boards_dir=boards_dir)
    sim.run_until(duration)
    for node in sim.nodes:
        node.ble_stop_adv()
    return {
        "nodes": sim.node_summaries(duration),
        "frames": [_frame_tuple(f) for f in sim.frames],
        "air": sim.air.export_packed(),
        "decode_errors": dict(sim.decode_errors),
        "cycles": sum(nd.cycles for nd in sim.nodes),
    }


def _air_arrays(packed: list[tuple[bytes, str, tuple[int, ...]]]) -> list[Any]:
    return [np.frombuffer(b, dtype=np.dtype(dt)).reshape(shape) for b, dt, shape in packed]


def sim_python() -> str | None:
    """The interpreter for shard workers: $URBANSENSE_SIM_PYTHON, else the PyPy environment
    ``make setup`` builds (.venv-pypy), else None (this interpreter, forked)."""
    env = os.environ.get("URBANSENSE_SIM_PYTHON")
    if env:
        return None if env == "self" else env
    pypy = ROOT / ".venv-pypy" / "bin" / "python"
    return str(pypy) if pypy.exists() else None


def _run_shards_in(python: str, jobs: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Each shard in a child ``python -m simulator.shard IN OUT``: pickled arguments in, the
    pickled result out (files, since the firmware's console may print to stdout)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))))
    with tempfile.TemporaryDirectory(prefix="urbansense-shards-") as tmp:
        procs = []
        for i, job in enumerate(jobs):
            src, dst = Path(tmp) / f"in-{i}.pickle", Path(tmp) / f"out-{i}.pickle"
            src.write_bytes(pickle.dumps(job, protocol=4))
            err = (Path(tmp) / f"err-{i}.txt").open("wb")
            procs.append((subprocess.Popen([python, "-m", "simulator.shard", str(src), str(dst)],
                                           cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                           stdout=subprocess.DEVNULL, stderr=err), dst, err))
        failed: str | None = None
        for proc, dst, err in procs:
            if failed is not None:
                proc.kill()  # one shard failed: the run has no result
            rc = proc.wait()
            err.close()
            if failed is None and (rc != 0 or not dst.exists()):
                tail = Path(err.name).read_text(errors="replace")[-2000:]
                failed = f"simulator shard under {python} failed (exit {rc}):\n{tail}"
        if failed is not None:
            raise RuntimeError(failed)
        out = [pickle.loads(dst.read_bytes()) for _, dst, _ in procs]
    return out


def run_parallel(scenario: str | Path | dict[str, Any] | Scenario, *, seed: int | None = None,
                 nodes: int | None = None, duration_s: float | None = None,
                 processes: int = 2, boards_dir: Path = BOARDS_DIR,
                 python: str | None = None) -> dict[str, Any]:
    """Shard nodes across processes; the air is merged and settled here. No truth file.

    python: run the shards under that interpreter (e.g. sim_python()'s PyPy) instead of
    forking this one; the result is the same bit for bit (tests/test_sim_pypy.py).
    """
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
    d = sc.duration_s if duration_s is None else duration_s
    jobs = [(sc, k, processes, None, d, boards_dir) for k in range(processes)]
    if python is not None:
        parts = _run_shards_in(python, jobs)
    else:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(processes) as pool:
            parts = pool.map(_shard_worker, jobs)
    return _merge_shards(sc, parts, d)


def _merge_shards(sc: Scenario, parts: list[dict[str, Any]], d: float) -> dict[str, Any]:
    """The shards' frames and air events as one district: collisions across shards are
    decided here, on the merged air."""
    gateways = [Gateway(str(g.get("id", f"gw-{i + 1}")), float(g.get("x", 0.0)), float(g.get("y", 0.0)))
                for i, g in enumerate(sc.gateways)]
    gw_index = {g.gw_id: i for i, g in enumerate(gateways)}
    for f in sc.faults:
        if f.kind == "gateway_out_of_range":
            gateways[gw_index[f.gateway or gateways[0].gw_id]].out_of_range.append(
                (f.at_s, f.until_s if f.until_s is not None else math.inf))
    air = AirModel(gateways, RadioParams(**sc.radio))
    all_nodes: list[dict[str, Any]] = []
    frames: list[Any] = []
    dec: Counter[str] = Counter()
    cols: list[list[Any]] = [[], [], [], [], []]
    for p in parts:
        base = len(frames)
        frames.extend(p["frames"])
        t, a, fr, rs, ch = _air_arrays(p["air"])
        for c, v in zip(cols, (t, a, fr + base, rs, ch)):  # noqa: B905 - 3.9: no strict=
            c.append(v)
        all_nodes.extend(p["nodes"])
        dec.update(p["decode_errors"])

    if len(gateways) > 62:
        raise ValueError("run_parallel: at most 62 gateways (heard-by bitmasks are int64)")
    heard = np.array([f[3] for f in frames], dtype=np.int64)
    if cols[0]:
        air.settle_all(np.concatenate(cols[0]), np.concatenate(cols[1]), np.concatenate(cols[2]),
                       np.concatenate(cols[3], axis=1), np.concatenate(cols[4]), heard)
    frames = [(*f[:3], h, *f[4:]) for f, h in zip(frames, heard.tolist())]  # noqa: B905 - 3.9
    all_nodes.sort(key=lambda n: n["index"])
    cell = CELLS[sc.cell]
    return build_summary(sc, cell, gateways, all_nodes, frames, air.stats, d, dict(dec))
