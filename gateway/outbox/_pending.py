"""The in-memory index of batches waiting for their PUBACK: what ``peek`` reads and eviction picks.

The file is the truth; this index is rebuilt from it at start-up and only saves reading it
back: ids, stored sizes, frame counts and priorities of the waiting rows, in id order.
"""

from __future__ import annotations

import bisect
import itertools
from array import array
from typing import Final

PRIORITY_ORDINARY: Final = 0
PRIORITY_ALARM: Final = 1
_DEAD: Final = -1  # priority of a row no longer waiting (acked or evicted)


class Pending:
    """Batches waiting for their PUBACK, in id order: 17 bytes a row in parallel arrays.

    A tuple per row in a dict cost ~150 B. Acks and evictions only mark a row dead; the dead
    are squeezed out once they outnumber the living, so lookups stay O(log n) by bisection.
    """

    __slots__ = ("_cursor", "_head", "frames", "ids", "live", "nbytes", "prio")

    def __init__(self) -> None:
        self.ids = array("q")
        self.nbytes = array("i")  # stored_bytes of the row
        self.frames = array("i")
        self.prio = array("b")  # PRIORITY_* or _DEAD
        self.live = 0
        self._head = 0  # no live row sits before this index (acks and evictions take the oldest)
        self._cursor = [0, 0]  # per priority: no live row of it sits before this index

    def append(self, batch_id: int, nbytes: int, priority: int, frames: int) -> None:
        if self.ids and batch_id <= self.ids[-1]:
            raise ValueError(f"batch ids must grow: {batch_id} after {self.ids[-1]}")
        self.ids.append(batch_id)
        self.nbytes.append(nbytes)
        self.frames.append(frames)
        self.prio.append(1 if priority else 0)
        self.live += 1

    def _index(self, batch_id: int) -> int:
        i = bisect.bisect_left(self.ids, batch_id)
        if i < len(self.ids) and self.ids[i] == batch_id and self.prio[i] != _DEAD:
            return i
        return -1

    def __contains__(self, batch_id: int) -> bool:
        return self._index(batch_id) >= 0

    def remove(self, batch_id: int) -> tuple[int, int, int] | None:
        """(stored bytes, priority, frames) of a waiting row, now gone; None if not waiting."""
        i = self._index(batch_id)
        if i < 0:
            return None
        out = (self.nbytes[i], self.prio[i], self.frames[i])
        self.prio[i] = _DEAD
        self.live -= 1
        if len(self.ids) - self.live > max(self.live, 1024):
            self._compact()
        elif i == self._head:
            n = len(self.ids)
            while self._head < n and self.prio[self._head] == _DEAD:
                self._head += 1
        return out

    def _compact(self) -> None:
        keep = bytes(p != _DEAD for p in self.prio)  # one byte a row while it runs
        self.ids = array("q", itertools.compress(self.ids, keep))
        self.nbytes = array("i", itertools.compress(self.nbytes, keep))
        self.frames = array("i", itertools.compress(self.frames, keep))
        self.prio = array("b", itertools.compress(self.prio, keep))
        self._head = 0
        self._cursor = [0, 0]

    def oldest(self, excess: int) -> list[int]:
        """Ids to evict for ``excess`` bytes: oldest ordinary first, then oldest alarms.

        A larger excess gives a longer list with the smaller one as its head.
        """
        out: list[int] = []
        n = len(self.ids)
        for want in (PRIORITY_ORDINARY, PRIORITY_ALARM):
            i = max(self._cursor[want], self._head)
            while i < n and self.prio[i] != want:
                i += 1
            self._cursor[want] = i
            while excess > 0 and i < n:
                if self.prio[i] == want:
                    out.append(self.ids[i])
                    excess -= self.nbytes[i]
                i += 1
        return out

    def after(self, after_id: int, limit: int) -> list[int]:
        """Up to ``limit`` waiting ids above ``after_id``, in order."""
        i = max(bisect.bisect_right(self.ids, after_id), self._head)
        out: list[int] = []
        ids, prio, n = self.ids, self.prio, len(self.ids)
        while i < n and len(out) < limit:
            if prio[i] != _DEAD:
                out.append(ids[i])
            i += 1
        return out

    def all_ids(self) -> list[int]:
        return list(itertools.compress(self.ids, (p != _DEAD for p in self.prio)))
