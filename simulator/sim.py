"""A district: nodes running the real firmware, their world, the air, the ground truth.

``Simulation`` runs one process's worth of nodes on one event engine: built from the scenario
(simulator/build.py), their frames recorded in the truth ledger (simulator/ledger.py), the run
summed up by simulator/summary.py. simulator/parallel.py runs a district as shards.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from types import ModuleType
from typing import IO, Any, Final

from simulator.air import AirModel, Gateway, RadioParams
from simulator.board_main import BoardMain
from simulator.build import DistrictBuilder, NodeInfo, load_scenario
from simulator.console import Console
from simulator.energy import BOARDS_DIR, CELLS
from simulator.engine import Engine
from simulator.firmware_loader import load_firmware
from simulator.ledger import Frame, TruthLedger
from simulator.node import SimNode
from simulator.scenario import Scenario
from simulator.serial_link import PtyLink
from simulator.summary import NodeOutcome, build_summary
from urbansense.wire.errors import FrameError
from urbansense.wire.protocol import NodeKeys, parse_header, verify_uplink

ROOT: Final = Path(__file__).resolve().parents[1]
SETTLE_EVERY_S: Final = 600.0  # bounds the memory of pending air events in fast runs
REALTIME_TICK_S: Final = 0.25  # in realtime runs adverts reach the gateway this often
HORIZON_MARGIN_S: Final = 86400.0  # pin wakes are searched this far past the end of a run


class Simulation:
    """Build with a scenario (path, dict or Scenario); run with run_until / run."""

    def __init__(self, scenario: str | Path | dict[str, Any] | Scenario, *, seed: int | None = None,
                 nodes: int | None = None, serial: str = "loopback", firmware: ModuleType | None = None,
                 shard: tuple[int, int] | None = None, serial_wall_factor: float = 1.0,
                 boards_dir: Path = BOARDS_DIR) -> None:
        sc = load_scenario(scenario, seed, nodes)
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
        self.ledger = TruthLedger(self)
        self._keys: dict[int, NodeKeys] = {}
        self.last_summary: dict[str, Any] | None = None
        builder = DistrictBuilder(self)
        builder.build()
        builder.schedule_faults()
        self._tick_chain = 0
        self._start_settle_ticks(SETTLE_EVERY_S)

    @property
    def frames(self) -> list[Frame]:
        """Every frame sent so far, in order (the truth ledger's)."""
        return self.ledger.frames

    @property
    def nodes_by_index(self) -> dict[int, SimNode]:
        cache: dict[int, SimNode] | None = getattr(self, "_nbi", None)
        if cache is None or len(cache) != len(self.nodes):
            cache = {n.index: n for n in self.nodes}
            self._nbi = cache
        return cache

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
        self.air.settle(cut, self.ledger.deliver)
        self.ledger.flush_truth(cut)

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
            n.radio.stop()
        self.settle(math.inf)
        self.t_end = t_end

    def close(self) -> None:
        self.ledger.close()
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
        """Write every frame's record (simulator/ledger.py) to ``path`` as its fate is known."""
        self.ledger.open_truth(path)

    @property
    def truth_out(self) -> IO[str] | None:
        return self.ledger.truth_out

    # ------------------------------------------------------------------ summary
    def node_outcomes(self, t_end: float) -> list[NodeOutcome]:
        out = []
        for n in self.nodes:
            uc = n.charge_to(t_end)
            avg_ua = sum(uc.values()) / t_end if t_end > 0 else 0.0
            out.append(NodeOutcome(
                index=n.index, kind=n.kind, board=n.profile.board, uc=uc,
                ble_init_ms=n.profile.ble_init_ms, static_ua=n.profile.static_ua,
                avg_ua=avg_ua + n.profile.static_ua, cycles=n.cycles,
                errors=dict(n.errors), resets={str(k): v for k, v in n.resets.items()},
                hung=n.hung, flash_writes=n.flash_writes, console_lines=n.console_lines,
                world=_world_stats(n, t_end),
            ))
        return out

    def summary(self, t_end: float | None = None) -> dict[str, Any]:
        t = self.engine.now if t_end is None else t_end
        return build_summary(self.scenario, self.cell, self.gateways, self.node_outcomes(t),
                             self.ledger.outcomes(), self.air.stats, t, dict(self.ledger.decode_errors))


def _world_stats(n: SimNode, t_end: float) -> dict[str, float]:
    w = n.world
    if n.kind == "parking":
        return {"arrivals": float(w.arrivals_between(0.0, t_end))}
    if n.kind == "bin":
        return {"collections": float(sum(1 for c in w.collections if c <= t_end)),
                "fill_pct_end": w.fill_pct(t_end)}
    return {"volume_l": w.volume_l(t_end), "leaks": float(len([x for x in w.leaks if x <= t_end])),
            "bursts": float(len([x for x in w.bursts if x <= t_end]))}
