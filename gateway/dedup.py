"""Deduplication by (node id, FCnt) over the frames not yet committed.

Verify already turns a byte-identical repeat into a ``Duplicate``; this index is where such
a repeat meets the original while it still waits in the open batch: the best RSSI wins and a
serial retransmission's reply joins the original's, so both get the ack after the commit.
"""

from __future__ import annotations

from gateway.flow import Accepted, Duplicate


class DedupIndex:
    __slots__ = ("_open",)

    def __init__(self) -> None:
        self._open: dict[tuple[int, int], Accepted] = {}

    def add(self, acc: Accepted) -> bool:
        """False if (node, fcnt) is already waiting (merged into the waiting one)."""
        key = (acc.record.node_id, acc.record.fcnt)
        first = self._open.get(key)
        if first is None:
            self._open[key] = acc
            return True
        _merge_rssi(first, acc.record.rssi_dbm)
        first.replies.extend(acc.replies)
        return False

    def merge(self, dup: Duplicate) -> bool:
        """Fold a duplicate into its waiting original; False if the original is committed."""
        first = self._open.get((dup.node_id, dup.fcnt))
        if first is None:
            return False
        _merge_rssi(first, dup.rssi_dbm)
        if dup.reply is not None:
            first.replies.append(dup.reply)
        return True

    def clear(self) -> None:
        self._open.clear()

    def __len__(self) -> int:
        return len(self._open)


def _merge_rssi(acc: Accepted, rssi_dbm: int | None) -> None:
    if rssi_dbm is not None and (acc.record.rssi_dbm is None or rssi_dbm > acc.record.rssi_dbm):
        acc.record.rssi_dbm = rssi_dbm
        acc.packed = None  # its SenML records changed: the batcher encodes them again
