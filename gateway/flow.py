"""What flows between the gateway's stages, in pipeline order: one module to read the shapes.

    transport --Heard--> verify --Verdict (Accepted | Duplicate)--> batch
        batch --FrameRecord (urbansense.wire.senml, in each Accepted)--> SenML pack -> outbox
        batch --NodeRow (each node's replay state, committed with its batch)--> outbox
        outbox --NodeRow (at start)--> replay table

Plain data, no behaviour: every stage imports its inputs and outputs from here, not from the
stage that made them (so the batcher does not import verify, nor replay the outbox).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from urbansense.wire.senml import FrameRecord

__all__ = ["Accepted", "Duplicate", "Heard", "NodeRow", "Reply", "Verdict"]

Reply = Callable[[bytes], None]
"""Writes an ack frame back to the node (serial only); the transport wraps it."""


@dataclass(slots=True)
class Heard:
    """Raw bytes from a transport. ``wrapped``: a serial packet still COBS + CRC encoded."""

    data: bytes
    transport: str
    rssi_dbm: int | None = None
    reply: Reply | None = None
    wrapped: bool = False
    received_s: float = field(default_factory=time.time)


@dataclass(slots=True)
class Accepted:
    record: FrameRecord
    frame: bytes
    kind: str
    alarm: bool
    replies: list[Reply] = field(default_factory=list)
    # The frame's SenML records, CBOR-encoded once by the batcher, and how many records that
    # is; None until then, and again when a duplicate's better RSSI changes the records.
    packed: tuple[bytes, int] | None = None


@dataclass(slots=True)
class Duplicate:
    node_id: int
    fcnt: int
    rssi_dbm: int | None
    reply: Reply | None


Verdict = Accepted | Duplicate


class NodeRow(NamedTuple):
    """A node's committed replay state (a tuple: one per node of every batch, packed as is)."""

    node_id: int
    fcnt: int
    dcnt: int
    seen: bytes  # the replay window below fcnt (gateway/replay.py), 8 bytes little-endian
