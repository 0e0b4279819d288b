"""Node health: what the gateway knows of each node, and the events it raises.

Events (JSON to ``.../event``): ``silent`` when a node is unheard past ``silent_factor`` x its
expected interval, ``low_battery`` on the node's flag or below ``low_battery_mv``, ``alarm``
for each alarm bit newly raised (leak, burst, backflow, tamper). Each is raised once per
transition, not on every frame.

Every registered node has an entry from the start, heard or not: a node that never reports
after a gateway restart is silent too, counted from the start (``last_seen_s`` stays None
until it is heard).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.config import HealthConfig
from gateway.registry import Registry
from urbansense.wire.protocol import T_STATUS
from urbansense.wire.quantities import ALARM_NAMES, BY_FIELD, F_LOW_BATTERY, QUANTITIES
from urbansense.wire.senml import FrameRecord

_Q_ALARMS = BY_FIELD["alarms"].key
_Q_FLAGS = BY_FIELD["flags"].key
_Q_BATTERY = BY_FIELD["battery_mv"].key
_FIELDS = {key: q.field for key, q in QUANTITIES.items()}

EventSink = Callable[[dict[str, Any]], None]


RSSI_RECENT = 30  # frames of RSSI history per node (a few minutes for a busy node)


@dataclass(slots=True)
class NodeHealth:
    node_id: int
    kind: str
    last_seen_s: float | None = None  # None: not heard since the gateway started
    rssi_dbm: int | None = None
    battery_mv: int | None = None
    fcnt: int = 0
    frames: int = 0
    transport: str = ""
    alarms: int = 0
    flags: int = 0  # from the latest status frame
    low_battery: bool = False
    silent: bool = False
    # The latest value of each quantity, by key: named only when the status page asks.
    readings: dict[int, int | bool] = field(default_factory=dict)
    # (received_s, RSSI) of the last frames: the technician's "signal over the last minutes".
    rssi_recent: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=RSSI_RECENT))

    def as_json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "node": f"{self.node_id:08x}",
            "kind": self.kind,
            "last_seen_s": self.last_seen_s,
            "rssi_dbm": self.rssi_dbm,
            "battery_mv": self.battery_mv,
            "fcnt": self.fcnt,
            "frames": self.frames,
            "transport": self.transport,
            "alarms": [name for bit, name in ALARM_NAMES.items() if self.alarms & bit],
            "flags": self.flags,
            "low_battery": self.low_battery,
            "silent": self.silent,
            "readings": {_FIELDS.get(k) or f"q{k}": v for k, v in self.readings.items()},
            "rssi_recent": [list(x) for x in self.rssi_recent],
        }


class Health:
    def __init__(
        self, cfg: HealthConfig, registry: Registry, sink: EventSink, started_s: float | None = None
    ) -> None:
        self.cfg = cfg
        self.registry = registry
        self.sink = sink
        self.started_s = time.time() if started_s is None else started_s
        self.nodes: dict[int, NodeHealth] = {
            n.node_id: NodeHealth(n.node_id, n.kind) for n in registry.nodes()
        }
        self.heard = 0  # nodes heard since start

    def registry_changed(self, registry: Registry, added: list[int], gone: list[int]) -> None:
        """A registry reload: added nodes are listed (not heard yet) like those at start;
        removed or revoked ones are no longer watched (no "silent" event for a retired board)."""
        for nid in gone:
            h = self.nodes.pop(nid, None)
            if h is not None and h.last_seen_s is not None:
                self.heard -= 1
        for nid in added:
            node = registry.get(nid)
            if node is not None and nid not in self.nodes:
                self.nodes[nid] = NodeHealth(nid, node.kind)

    def observe(self, rec: FrameRecord, kind: str) -> None:
        h = self.nodes.get(rec.node_id)
        if h is None:
            h = self.nodes[rec.node_id] = NodeHealth(rec.node_id, kind)
        if h.last_seen_s is None:
            self.heard += 1
        h.last_seen_s = rec.received_s
        h.fcnt = rec.fcnt
        h.frames += 1
        h.transport = rec.transport
        if rec.rssi_dbm is not None:
            h.rssi_dbm = rec.rssi_dbm
            h.rssi_recent.append((rec.received_s, rec.rssi_dbm))
        if h.silent:
            h.silent = False
            self._emit("back", h)
        readings = rec.readings
        h.readings.update(readings)
        if rec.ftype == T_STATUS:
            # Flags ride only in status frames and are omitted when 0: a status frame without
            # them clears them (else /api/status showed a cleared flag for ever).
            h.flags = int(readings.get(_Q_FLAGS, 0))
            if not h.flags:
                h.readings.pop(_Q_FLAGS, None)
        if _Q_BATTERY in readings:
            h.battery_mv = int(readings[_Q_BATTERY])
        low = bool(h.flags & F_LOW_BATTERY) or (
            h.battery_mv is not None and h.battery_mv < self.cfg.low_battery_mv
        )
        if low and not h.low_battery:
            self._emit("low_battery", h, battery_mv=h.battery_mv)
        h.low_battery = low
        if _Q_ALARMS in readings:
            alarms = int(readings[_Q_ALARMS])
            if alarms & ~h.alarms:  # a bit newly raised (rare): which ones
                for bit, name in ALARM_NAMES.items():
                    if alarms & bit and not h.alarms & bit:
                        self._emit("alarm", h, alarm=name, fcnt=rec.fcnt)
            h.alarms = alarms

    def check_silent(self, now_s: float | None = None) -> None:
        now = time.time() if now_s is None else now_s
        for h in self.nodes.values():
            node = self.registry.get(h.node_id)
            interval = (node.report_interval_s if node else None) or self.cfg.default_interval_s
            since_s = self.started_s if h.last_seen_s is None else h.last_seen_s
            if not h.silent and now - since_s > self.cfg.silent_factor * interval:
                h.silent = True
                self._emit("silent", h, last_seen_s=h.last_seen_s, expected_interval_s=interval)

    def _emit(self, event: str, h: NodeHealth, **extra: Any) -> None:
        self.sink({"event": event, "node_id": h.node_id, "node": f"{h.node_id:08x}",
                   "kind": h.kind, "time_s": time.time(), **extra})
