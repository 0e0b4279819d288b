"""sys.stdout while a node runs: what the firmware prints goes to that node's serial console.

One Console serves a whole simulation; ``SimNode.boot`` points it at the node whose cycle runs
and swaps it in as ``sys.stdout`` for the cycle. Contract: complete lines go to the node's
``console`` (the last ``KEEP`` of them) and count in ``console_lines``; a line without its
newline yet waits for the rest; with no node set, writes are dropped. Bounded on purpose: a
node that prints in a loop must not grow the simulator's memory.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from simulator.node import SimNode


class Console(io.TextIOBase):
    """sys.stdout while a node runs: what it prints goes to that node's serial console."""

    KEEP: Final = 20

    def __init__(self) -> None:
        self.node: SimNode | None = None
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        n = self.node
        if n is not None:
            text = self._partial + s
            *lines, self._partial = text.split("\n")
            for line in lines:
                n.console_lines += 1
                n.console.append(line)
                if len(n.console) > self.KEEP:
                    del n.console[0]
        return len(s)
