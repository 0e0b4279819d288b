"""A watchdog thread that catches code blocking an asyncio event loop.

Every ``period_s`` the watchdog schedules a no-op on the loop (``call_soon_threadsafe``) and
waits for it. A loop that has not run it within ``threshold_s`` is stalled; while the stall
lasts the watchdog samples the loop thread: its Python stack, its scheduler state
(/proc/self/task/<tid>/stat) and its CPU time. The stall is a block when

- the thread burned ``cpu_threshold_s`` of CPU in it (a long computation in a callback), or
- the thread slept outside the selector (``time.sleep``, a blocking socket or file call,
  ``Event.wait``: state S or D, the innermost frame not in ``selectors``) on the same line
  for three samples in a row (one sample can catch a running thread waiting for the GIL
  that the sampler holds).

A thread that was runnable but not running (state R, little CPU: the machine is busy with
other work), idle in the selector, or running no loop at all (pytest-asyncio runs the loop
only inside each async fixture and test) is not blocking anything, so a loaded 2-core machine
does not fail tests that are fine. The stack of the sample that decided is kept, so the
failure names the blocking line.

asyncio's own debug mode (``slow_callback_duration``) measures wall time only, so it cannot
tell a blocking call from a descheduled thread, and it slows every callback.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from types import FrameType


@dataclass(frozen=True, slots=True)
class Block:
    stalled_s: float
    cpu_s: float
    stack: str  # the loop thread's stack when the block was recognised


def _state(native_id: int) -> str:
    """The thread's scheduler state letter (R, S, D...), "?" off Linux."""
    try:
        with open(f"/proc/self/task/{native_id}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return "?"
    return stat[stat.rindex(b")") + 2:][:1].decode()  # the name in (...) may hold spaces


_SAME_SAMPLES = 3  # a thread running Python code is seen on another line from one sample to the next


def _in_selector(frame: FrameType | None) -> bool:
    return frame is not None and frame.f_code.co_filename.endswith("selectors.py")


class LoopWatch:
    """``start()`` in the loop's thread, ``stop()`` when done; ``blocks`` lists what was seen."""

    def __init__(self, loop: asyncio.AbstractEventLoop, threshold_s: float = 1.0,
                 cpu_threshold_s: float = 0.5, period_s: float = 0.05) -> None:
        self.loop = loop
        self.threshold_s = threshold_s
        self.cpu_threshold_s = cpu_threshold_s
        self.period_s = period_s
        self.blocks: list[Block] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loopwatch", daemon=True)
        self._ident = 0
        self._native_id = 0
        self._cpu_clock = 0

    def start(self) -> None:
        """Call from the thread that runs the loop."""
        self._ident = threading.get_ident()
        self._native_id = threading.get_native_id()
        self._cpu_clock = time.pthread_getcpuclockid(self._ident)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _cpu_s(self) -> float:
        return time.clock_gettime(self._cpu_clock)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            if not self.loop.is_running():
                continue  # between pytest-asyncio's run_until_complete calls: nothing to block
            pong = threading.Event()
            try:
                self.loop.call_soon_threadsafe(pong.set)
            except RuntimeError:  # the loop is closed
                return
            if not pong.wait(self.threshold_s):
                self._watch_stall(pong)

    def _watch_stall(self, pong: threading.Event) -> None:
        t0 = time.monotonic() - self.threshold_s
        cpu0 = self._cpu_s()
        where: tuple[object, int] | None = None  # the innermost frame of the last sample
        same = 0  # consecutive samples asleep on that same line
        stack = ""
        while not pong.is_set() and not self._stop.is_set():
            if not self.loop.is_running():
                return  # the loop stopped (sync code between fixtures runs without it)
            state = _state(self._native_id)
            frame = sys._current_frames().get(self._ident)
            here = (frame.f_code, frame.f_lineno) if frame is not None else None
            asleep = state in ("S", "D") and frame is not None and not _in_selector(frame)
            same = same + 1 if asleep and here == where else int(asleep)
            where = here
            if same >= _SAME_SAMPLES or self._cpu_s() - cpu0 >= self.cpu_threshold_s:
                stack = "".join(traceback.format_stack(frame))
                break
            pong.wait(self.period_s)
        if not stack:
            return  # idle in the selector, descheduled, or busy only briefly: not a block
        while not pong.wait(self.period_s) and not self._stop.is_set():
            pass  # how long it lasts, up to the end of the watch
        self.blocks.append(Block(time.monotonic() - t0, self._cpu_s() - cpu0, stack))

    def report(self) -> str:
        return "\n".join(f"the event loop was blocked for {b.stalled_s:.2f} s ({b.cpu_s:.2f} s CPU) at:\n"
                         f"{b.stack}" for b in self.blocks)
