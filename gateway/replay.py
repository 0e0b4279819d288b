"""Per-node freshness: high-water marks, recent frames and downlink counters.

``fcnt`` moves as soon as verify accepts a frame (so the next frame is judged against it);
``committed`` is what the outbox holds, persisted in the same transaction as the batch that
carries the frame. After a crash the gateway restarts from ``committed``: a frame it never
committed can be accepted again (it was never acked), one it committed cannot.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from gateway.outbox import NodeRow

RECENT_FRAMES: Final = 8  # byte-identical retransmissions recognised as duplicates


class NodeState:
    __slots__ = ("acks", "committed", "dcnt", "fcnt", "node_id", "recent")

    def __init__(self, node_id: int, fcnt: int | None = None, dcnt: int = 0) -> None:
        self.node_id = node_id
        self.fcnt = fcnt
        self.committed = fcnt
        self.dcnt = dcnt
        self.recent: deque[tuple[int, bytes]] = deque(maxlen=RECENT_FRAMES)
        self.acks: dict[int, bytes] = {}  # fcnt -> the ack sent (re-sent for a retransmission)

    def is_recent(self, fcnt: int, frame: bytes) -> bool:
        return any(f == fcnt and b == frame for f, b in self.recent)

    def accept(self, fcnt: int, frame: bytes) -> None:
        self.fcnt = fcnt
        self.recent.append((fcnt, frame))

    def remember_ack(self, fcnt: int, ack: bytes) -> None:
        self.acks[fcnt] = ack
        while len(self.acks) > RECENT_FRAMES:
            del self.acks[next(iter(self.acks))]

    def row(self, committed_fcnt: int) -> NodeRow:
        """The persisted form; only frames up to committed_fcnt are durable."""
        recent = b"".join(
            bytes((len(b),)) + f.to_bytes(4, "little") + b
            for f, b in self.recent
            if f <= committed_fcnt
        )
        return NodeRow(self.node_id, committed_fcnt, self.dcnt, recent)

    @classmethod
    def from_row(cls, row: NodeRow) -> NodeState:
        st = cls(row.node_id, row.fcnt, row.dcnt)
        data = row.recent
        i = 0
        while i + 5 <= len(data):
            n = data[i]
            fcnt = int.from_bytes(data[i + 1 : i + 5], "little")
            st.recent.append((fcnt, bytes(data[i + 5 : i + 5 + n])))
            i += 5 + n
        return st


class ReplayTable:
    __slots__ = ("_nodes",)

    def __init__(self, rows: list[NodeRow] | None = None) -> None:
        self._nodes: dict[int, NodeState] = {}
        for r in rows or ():
            self._nodes[r.node_id] = NodeState.from_row(r)

    def get(self, node_id: int) -> NodeState:
        st = self._nodes.get(node_id)
        if st is None:
            st = self._nodes[node_id] = NodeState(node_id)
        return st

    def peek(self, node_id: int) -> NodeState | None:
        return self._nodes.get(node_id)
