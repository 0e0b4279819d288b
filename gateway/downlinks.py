"""Downlinks: commands from the operator's ``.../down`` topic to a serial node, and back.

The life of a downlink (docs/GATEWAY.md "Downlinks" states the guarantees):

1. A JSON message ``{"node_id": 4, "commands": {"report_interval_s": 900}, "id": "..."}``
   (``id`` optional, echoed in the ack) arrives on ``down`` from any configured broker
   (gateway/listener.py). ``parse`` checks it: a known node, known commands in the node's
   ranges, and an ack carrying them that still fits the node's serial receive buffer.
2. ``queue`` merges the commands into the node's pending set (a newer value of a command
   replaces the older) and stores the set in the outbox *before* the broker gets its PUBACK.
3. Every ack to the node carries the whole pending set (``for_ack``). The DCnt of the first
   ack that carried the current set is recorded (``sent_dcnt``), so every ack with a DCnt
   at or above it carried these commands.
4. A serial node reports the last DCnt it accepted in each frame (quantity 14 ``dcnt``,
   docs/PROTOCOL.md). Once it reports ``dcnt >= sent_dcnt``, the node has accepted an ack
   carrying the set and applied it (``us_serial.apply_commands``): the set is deleted in that
   frame's batch commit, and ``.../down/ack`` says so.

A crash anywhere in between leaves the set in the outbox, so it rides with the node's acks
again after the restart: a lost ack, a lost cache of acks or a gateway crash cannot lose it.
Only serial nodes receive downlinks (acks are serial only, docs/PROTOCOL.md section 1).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from gateway.metrics import Metrics
from gateway.outbox import Outbox
from gateway.registry import Registry
from urbansense.wire import framing
from urbansense.wire.protocol import NodeKeys, encode_ack
from urbansense.wire.quantities import COMMAND_RANGES, COMMANDS, MAX_THRESHOLDS, Q_DCNT

_log = logging.getLogger(__name__)

# A serial node keeps at most this many received bytes (firmware/lib/us_serial.py _RX_MAX):
# a longer ACK packet (COBS, CRC and the 0x00 delimiter included) never reaches it, the frame
# is never acked and every retransmission gets the same cached ack.
MAX_ACK_PACKET_LEN: Final = 128
# A downlink is a small JSON object; bigger is refused before parsing (a deep '[[[...' would
# otherwise cost a parse to the recursion limit).
MAX_DOWNLINK_BYTES: Final = 4096
MAX_ID_LEN: Final = 64
MAX_IDS: Final = 16  # ids remembered per pending set (the newest)
_UINT32_MAX: Final = 0xFFFFFFFF
_NAMES: Final = {key: name for name, key in COMMANDS.items()}

AppliedSink = Callable[[dict[str, Any]], None]


def commands_from_json(obj: Any) -> dict[int, object]:
    """{"report_interval_s": 900} -> {1: 900}; ValueError names the bad command."""
    if not isinstance(obj, dict) or not obj:
        raise ValueError("commands must be a non-empty object")
    out: dict[int, object] = {}
    for name, value in obj.items():
        key = COMMANDS.get(name)
        if key is None:
            raise ValueError(f"unknown command {name!r}")
        lo, hi = COMMAND_RANGES[name]
        if name == "thresholds":
            if (not isinstance(value, list) or not 1 <= len(value) <= MAX_THRESHOLDS
                    or not all(type(v) is int and lo <= v <= hi for v in value)):
                raise ValueError(f"thresholds must be a list of 1..{MAX_THRESHOLDS} integers {lo}..{hi}")
        elif type(value) is not int or not lo <= value <= hi:
            raise ValueError(f"{name} must be an integer {lo}..{hi}")
        out[key] = value
    return out


def ack_packet_len(keys: NodeKeys, node_id: int, commands: dict[int, object]) -> int:
    """Bytes on the serial line of an ack carrying these commands (counters do not change it)."""
    return len(framing.wrap(encode_ack(keys, node_id, _UINT32_MAX, _UINT32_MAX, commands)))


@dataclass(slots=True)
class Downlink:
    node_id: int
    commands: dict[int, object]
    ident: str | None = None


@dataclass(slots=True)
class Pending:
    commands: dict[int, object]
    ids: list[str] = field(default_factory=list)
    sent_dcnt: int | None = None  # DCnt of the first ack that carried this set

    def to_json(self) -> str:
        return json.dumps({"c": {str(k): v for k, v in self.commands.items()},
                           "ids": self.ids, "sent": self.sent_dcnt})

    @classmethod
    def from_json(cls, text: str) -> Pending:
        obj = json.loads(text)
        if "c" not in obj:  # a row stored before ids and sent_dcnt: commands only
            return cls({int(k): v for k, v in obj.items()})
        sent = obj.get("sent")
        if sent is not None and type(sent) is not int:
            raise ValueError("sent is not an integer")
        return cls({int(k): v for k, v in obj["c"].items()}, [str(i) for i in obj.get("ids", [])], sent)


def named(commands: dict[int, object]) -> dict[str, object]:
    return {_NAMES.get(k, str(k)): v for k, v in commands.items()}


class Downlinks:
    """Pending commands per node, persisted in the outbox; see the module docstring."""

    def __init__(self, outbox: Outbox, registry: Registry, on_applied: AppliedSink, metrics: Metrics) -> None:
        self.outbox = outbox
        self.registry = registry
        self.on_applied = on_applied
        self.metrics = metrics
        self.pending: dict[int, Pending] = {}
        for node_id, text in outbox.load_downlinks().items():
            try:
                p = Pending.from_json(text)
                self._check_fits(node_id, p.commands)
            except (ValueError, AttributeError, TypeError) as exc:
                # Stored before the size check existed, or damaged: never sent, kept on disk
                # until the node's next downlink replaces it.
                _log.error("event=downlink_dropped node=%08x error=%s", node_id, exc)
                continue
            self.pending[node_id] = p

    # -- in: from MQTT -------------------------------------------------------------------

    def parse(self, payload: object) -> Downlink:
        """ValueError (or KeyError, TypeError, RecursionError) for anything not a valid downlink."""
        if isinstance(payload, bytes | bytearray):
            text: str | bytes = bytes(payload)
        elif isinstance(payload, str):
            text = payload
        else:
            raise ValueError(f"payload of type {type(payload).__name__}")
        if len(text) > MAX_DOWNLINK_BYTES:
            raise ValueError(f"{len(text)} bytes, more than {MAX_DOWNLINK_BYTES}")
        obj = json.loads(text)
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
        node_id = obj["node_id"]
        if type(node_id) is not int or self.registry.get(node_id) is None:
            raise ValueError(f"unknown node_id {node_id!r}")
        ident = obj.get("id")
        if ident is not None and (not isinstance(ident, str) or len(ident) > MAX_ID_LEN):
            raise ValueError(f"id must be a string of at most {MAX_ID_LEN} characters")
        return Downlink(node_id, commands_from_json(obj.get("commands")), ident)

    def queue(self, d: Downlink) -> None:
        """Merge into the node's pending set and store it (raises if the store fails or the
        ack would not fit the node's receive buffer: then nothing changed)."""
        old = self.pending.get(d.node_id)
        merged = {**old.commands, **d.commands} if old else dict(d.commands)
        self._check_fits(d.node_id, merged)
        ids = (old.ids if old else []) + ([d.ident] if d.ident else [])
        sent = old.sent_dcnt if old and merged == old.commands else None  # a new set: not sent yet
        p = Pending(merged, ids[-MAX_IDS:], sent)
        self.outbox.put_downlink(d.node_id, p.to_json())
        self.pending[d.node_id] = p

    def _check_fits(self, node_id: int, commands: dict[int, object]) -> None:
        node = self.registry.get(node_id)
        if node is None:
            raise ValueError(f"unknown node {node_id:08x}")
        n = ack_packet_len(node.keys, node_id, commands)
        if n > MAX_ACK_PACKET_LEN:
            raise ValueError(f"ack would be {n} bytes on serial, a node reads {MAX_ACK_PACKET_LEN}")

    # -- out: with the acks, back from the node -------------------------------------------

    def commands_for(self, node_id: int) -> dict[int, object] | None:
        p = self.pending.get(node_id)
        return p.commands if p else None

    def plan(self) -> BatchPlan:
        return BatchPlan(self)


class BatchPlan:
    """What one batch does to the pending sets; applied only once its commit returned.

    Confirmations are taken before acks, so a frame that confirms a set gets an ack without
    it. ``done`` is the node ids whose sets the batch's commit deletes."""

    __slots__ = ("_confirmed", "_d", "_sent")

    def __init__(self, d: Downlinks) -> None:
        self._d = d
        self._confirmed: dict[int, int] = {}  # node id -> the DCnt the node reported
        self._sent: dict[int, int] = {}  # node id -> DCnt of the first ack carrying its set

    def report(self, node_id: int, readings: dict[int, Any]) -> None:
        """A frame in this batch; its ``dcnt`` reading (if any) may confirm the node's set."""
        reported = readings.get(Q_DCNT)
        p = self._d.pending.get(node_id)
        if p is None or p.sent_dcnt is None or type(reported) is not int:
            return
        if reported >= p.sent_dcnt:
            self._confirmed[node_id] = max(reported, self._confirmed.get(node_id, 0))

    def for_ack(self, node_id: int, dcnt: int) -> dict[int, object] | None:
        if node_id in self._confirmed:
            return None
        p = self._d.pending.get(node_id)
        if p is None:
            return None
        if p.sent_dcnt is None and node_id not in self._sent:
            self._sent[node_id] = dcnt
        return p.commands

    @property
    def done(self) -> list[int]:
        return list(self._confirmed)

    def committed(self) -> None:
        """The batch is on disk: forget confirmed sets (say so), store the sent DCnts."""
        d = self._d
        for node_id, reported in self._confirmed.items():
            p = d.pending.pop(node_id)
            d.metrics.downlinks.inc("applied")
            _log.info("event=downlink_applied node=%08x dcnt=%d ids=%s", node_id, reported, p.ids)
            d.on_applied({"node_id": node_id, "node": f"{node_id:08x}", "commands": named(p.commands),
                          "ids": p.ids, "dcnt": reported})
        for node_id, dcnt in self._sent.items():
            p = d.pending[node_id]
            p.sent_dcnt = dcnt
            d.metrics.downlinks.inc("sent")
            try:
                # After the commit: a crash before this write leaves sent_dcnt unset, so the
                # next ack records a larger one; the set is confirmed later, never wrongly.
                d.outbox.put_downlink(node_id, p.to_json())
            except Exception as exc:
                _log.warning("event=downlink_sent_not_stored node=%08x error=%r", node_id, exc)
