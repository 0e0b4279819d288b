"""Ingest: heard frames through verify into the batcher, in arrival order.

    transport callback --offer(Heard)--+--(nothing queued)--> verify -> Batcher.add
                                       +--> ingress queue -> verify task -> verdicts queue -> batch task

A street gives a gateway tens to hundreds of frames a second, most of them alone in their
read. Through the queues each such frame woke the verify task, then the batch task: about
five event-loop rounds, futures and timer handles a frame, which at 100 frames/s cost more
than verifying it (issue 16). So when nothing is queued ahead of it, ``offer`` verifies the
frame and hands it to the batcher synchronously, in the transport's callback.

What is kept:
- Order: a frame goes the direct way only when both queues are empty and verify holds no
  verdict, so nothing heard before it is still on the way; otherwise it queues behind them.
- Bounds and backpressure: when the ingress queue is full ``offer`` returns False (a serial
  port stops reading until there is room; BLE counts a drop), as a full queue did before.
- What verify and the batcher decide, and when acks go (after the commit, in the batcher).
- Supervision: a bug in the batcher on the direct way reaches ``on_error`` (the gateway
  counts and logs it as the batch stage's failure) instead of the transport.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.batcher import Batcher
from gateway.flow import Heard, Verdict
from gateway.verify import Verifier

__all__ = ["Ingest"]


class Ingest:
    __slots__ = ("_held", "batcher", "ingress", "on_error", "verdicts", "verifier")

    def __init__(self, ingress: asyncio.Queue[Heard], verdicts: asyncio.Queue[Verdict],
                 verifier: Verifier, batcher: Batcher,
                 on_error: Callable[[Exception], None]) -> None:
        self.ingress = ingress
        self.verdicts = verdicts
        self.verifier = verifier
        self.batcher = batcher
        self.on_error = on_error
        # A verdict the verify task holds while the verdicts queue is full: shutdown keeps it.
        self._held: Verdict | None = None

    def offer(self, h: Heard) -> bool:
        """Take one heard frame; False when the ingress queue is full (the caller keeps it)."""
        if self._held is None and not self.ingress.qsize() and not self.verdicts.qsize():
            v = self.verifier.process(h)  # never raises (gateway/verify.py)
            if v is not None:
                try:
                    self.batcher.add(v)
                except Exception as exc:  # a bug: the batch stage's, not the transport's
                    self.on_error(exc)
            return True
        try:
            self.ingress.put_nowait(h)
        except asyncio.QueueFull:
            return False
        return True

    async def run_verify(self) -> None:
        """The verify stage for queued frames: ingress -> verdicts, until cancelled."""
        process = self.verifier.process
        ingress, verdicts = self.ingress, self.verdicts
        take, give = ingress.get_nowait, verdicts.put_nowait
        while True:
            if self._held is None:
                self._held = process(await ingress.get())
            if self._held is not None:
                # Held until queued: a cancel while the queue is full must not drop a verdict.
                await verdicts.put(self._held)
                self._held = None
            # Drain what is queued without a scheduler round trip per frame (throughput); the
            # counts are taken once, as nothing else runs until this loop yields.
            for _ in range(min(ingress.qsize(), verdicts.maxsize - verdicts.qsize())):
                v = process(take())
                if v is not None:
                    give(v)

    def drain(self) -> None:
        """At shutdown, in arrival order: queued verdicts, the held one, frames not yet
        verified; then the open batch is committed and the batcher's timer stopped."""
        add = self.batcher.add
        while not self.verdicts.empty():
            add(self.verdicts.get_nowait())
        if self._held is not None:
            add(self._held)
            self._held = None
        while not self.ingress.empty():
            v = self.verifier.process(self.ingress.get_nowait())
            if v is not None:
                add(v)
        self.batcher.flush()
        self.batcher.close()
