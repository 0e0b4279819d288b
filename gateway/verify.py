"""Verify stage: outside bytes in, accepted frames (or duplicates) out. Never raises.

Outside bytes that fail a check are counted in ``rejections_total{reason}``; an exception
that is not a FrameError is a bug of the gateway, never blamed on the bytes: it is counted in
``internal_errors_total{stage="verify"}`` and logged at ERROR with its traceback (first
occurrence, then a count at most once a minute), and the frame is dropped.

Order of checks (docs/PROTOCOL.md section 4): serial unwrapping, cheap header checks, registry
lookup (no crypto for unknown or revoked nodes, each its own reason), MIC, body, then freshness against the node's high-water
mark and replay window (gateway/replay.py): a counter accepted before is a duplicate (a BLE
repeat or a serial retransmission after a lost ack), a counter inside the window not accepted
before is a late frame and accepted, a counter below the window is a replay.
"""

from __future__ import annotations

import logging
from typing import Any

from gateway.flow import Accepted, Duplicate, Heard, Verdict
from gateway.metrics import Metrics
from gateway.ratelog import RateLimitedLog, Traceback
from gateway.registry import Registry
from gateway.replay import WINDOW, Freshness, ReplayTable
from urbansense.wire import framing
from urbansense.wire.errors import FrameError
from urbansense.wire.protocol import T_ALARM, header_fields, open_uplink
from urbansense.wire.quantities import QUANTITIES
from urbansense.wire.senml import FrameRecord

_log = logging.getLogger(__name__)
_Q_ALARMS = next(k for k, q in QUANTITIES.items() if q.field == "alarms")
# Enum members looked up once: Freshness.X costs ~0.2 us a lookup on 3.11, three per frame.
_NEW, _LATE, _DUPLICATE = Freshness.NEW, Freshness.LATE, Freshness.DUPLICATE

REJECTED_NODES_MAX = 1024  # bounded: rejected frames come from outside

class Verifier:
    def __init__(self, registry: Registry, replay: ReplayTable, metrics: Metrics) -> None:
        self.registry = registry
        self.replay = replay
        self.metrics = metrics
        self._faults = RateLimitedLog(_log)
        self._bugs = RateLimitedLog(_log, level=logging.ERROR)
        # The last rejection per node whose header named one (insertion order = recency),
        # for the technician's "why is my node not heard" (status page, `urbansense node verify`).
        self.rejected: dict[int, dict[str, Any]] = {}

    def process(self, h: Heard) -> Verdict | None:
        """Judge one frame; None when rejected (counted and logged at a bounded rate)."""
        self.metrics.frames_in.inc(h.transport)
        try:
            return self._process(h)
        except FrameError as exc:
            self.metrics.rejections.inc(exc.reason)
            self._faults.log(
                f"{exc.reason}/{h.transport}",
                "event=frame_rejected reason=%s transport=%s detail=%s",
                exc.reason, h.transport, exc.detail,
            )
            self._note_rejection(h, exc.reason)
        except Exception as exc:  # a bug, not outside bytes: keep serving, but say so loudly
            self.metrics.internal_errors.inc("verify")
            self._bugs.log(
                f"bug/{type(exc).__name__}",
                "event=verify_bug transport=%s error=%r exc=%s", h.transport, exc, Traceback(exc),
            )
        return None

    def _note_rejection(self, h: Heard, reason: str) -> None:
        """Only on the rejection path: the header is parsed again, nothing per accepted frame."""
        try:
            frame = framing.unwrap(h.data) if h.wrapped else h.data
            _, node_id, _ = header_fields(frame)
        except FrameError:
            return  # no node named: counted by reason only
        last = self.rejected.pop(node_id, None)
        self.rejected[node_id] = {"reason": reason, "at_s": h.received_s, "rssi_dbm": h.rssi_dbm,
                                  "transport": h.transport, "count": (last["count"] if last else 0) + 1}
        if len(self.rejected) > REJECTED_NODES_MAX:
            del self.rejected[next(iter(self.rejected))]

    def _process(self, h: Heard) -> Verdict | None:
        frame = framing.unwrap(h.data) if h.wrapped else h.data
        # The tuple forms of parse_header/verify_uplink: no Header or Uplink object per frame.
        ftype, node_id, fcnt16 = header_fields(frame)
        node = self.registry.get(node_id)
        if node is None:
            if self.registry.is_revoked(node_id):
                raise FrameError("revoked_node", f"{node_id:08x}")
            raise FrameError("unknown_node", f"{node_id:08x}")
        st = self.replay.get(node_id)
        fcnt, readings = open_uplink(node.keys, frame, node_id, fcnt16, st.fcnt)
        fresh = st.admit(fcnt)  # a new or late counter is accepted, the others change nothing
        if fresh is not _NEW:
            if fresh is _DUPLICATE:
                self.metrics.duplicates.inc()
                return Duplicate(node_id, fcnt, h.rssi_dbm, h.reply)
            if fresh is not _LATE:
                raise FrameError("replay", f"node {node_id:08x} fcnt {fcnt} < {st.fcnt} - {WINDOW}")
            self.metrics.late_frames.inc()
        self.metrics.frames_accepted.inc(h.transport)
        alarm = ftype == T_ALARM or bool(readings.get(_Q_ALARMS, 0))
        rec = FrameRecord(node_id, fcnt, ftype, readings, h.received_s, h.rssi_dbm, h.transport)
        return Accepted(rec, frame, node.kind, alarm, [h.reply] if h.reply else [])
