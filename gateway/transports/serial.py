"""Serial transport: COBS packets from any number of ports, acks written back.

Packets longer than framing.MAX_PACKET_LEN (line noise, a wrong baud rate, a megabyte with no
delimiter) are discarded up to the next delimiter without being buffered, and each is counted
as a frame in and a ``too_long`` rejection (docs/PROTOCOL.md section 7).

A port is named by its stable path (``/dev/serial/by-id/...`` where one exists). When it
disappears (USB replug, pty closed) the task retries with backoff and picks it up again when
the path comes back, under whatever ttyUSB number the kernel gave it.

Reading costs one event-loop callback a wake-up, however many frames it brings: the callback
reads what the port holds (one ``read(2)`` of up to ``_READ_SIZE`` bytes on the non-blocking
descriptor pyserial opened and configured), splits it, and offers each packet to the pipeline
(``Sink.offer``: verified and batched at once when nothing is queued, gateway/ingest.py). No
task, future or stream buffer a frame: a USB adapter delivers one frame a read at a street's
rates, and those per-frame costs were most of a reading's CPU at 100 frames/s (issue 16).
When the pipeline has no room, reading stops: the frames of that read wait in ``_backlog``
(at most one read's worth) while the port's task puts them with backpressure, and the kernel's
buffer, then the node, hold the rest. Acks are written at once, non-blocking; bytes the port
does not take wait in ``_out`` (bounded: past ``_OUT_MAX`` an ack is refused, and the node
sends its frame again and gets the ack then).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from typing import Any, Final

import serial

from gateway.flow import Heard
from gateway.metrics import Metrics
from gateway.ratelog import RateLimitedLog
from gateway.transports import Sink
from urbansense.wire import framing

_log = logging.getLogger(__name__)
_READ_SIZE: Final = 16384
_OUT_MAX: Final = 65536  # ack bytes held for a port that does not take them (about 2,000 acks)
_TRANSPORT: Final = "serial"


class SerialPort:
    """One serial port (a ``Transport``): COBS packets in, acks out, reopened when it returns."""

    kind = _TRANSPORT

    def __init__(
        self,
        path: str,
        baudrate: int,
        sink: Sink,
        metrics: Metrics,
        retry_min_s: float = 0.2,
        retry_max_s: float = 30.0,
    ) -> None:
        self.path = path
        self.baudrate = baudrate
        self.sink = sink
        self.metrics = metrics
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.is_open = False
        self.opened = asyncio.Event()  # set at every successful open (tests wait on it)
        self.opens = 0
        self._faults = RateLimitedLog(_log)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd: int | None = None  # the open port's descriptor, None while closed
        self._splitter = framing.PacketSplitter()
        self._backlog: deque[Heard] = deque()  # read while the pipeline had no room
        self._out = bytearray()  # ack bytes the port has not taken yet
        self._wake: asyncio.Future[None] | None = None  # the session's: a backlog, or the end
        self._ended: OSError | None = None
        self._eof = False

    @property
    def name(self) -> str:
        return self.path

    def status(self) -> dict[str, Any]:
        return {"port": self.path, "open": self.is_open}

    # -- acks ----------------------------------------------------------------------------------

    def write_ack(self, frame: bytes) -> None:
        """Reply callback for verify.Heard: the ack goes to this port's current connection."""
        fd = self._fd
        if fd is None:
            raise ConnectionError(f"{self.path} not open")
        data = framing.wrap(frame)
        if self._out:  # behind acks the port has not taken: keep their order
            if len(self._out) + len(data) > _OUT_MAX:
                raise ConnectionError(f"{self.path}: {len(self._out)} ack bytes not taken")
            self._out += data
            return
        try:
            n = os.write(fd, data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as exc:
            self._end(exc)
            raise ConnectionError(f"{self.path}: {exc}") from exc
        if n < len(data):
            self._out += data[n:]
            assert self._loop is not None
            self._loop.add_writer(fd, self._writable)

    def _writable(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            n = os.write(fd, self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._end(exc)
            return
        del self._out[:n]
        if not self._out and self._loop is not None:
            self._loop.remove_writer(fd)

    # -- reading -------------------------------------------------------------------------------

    def _readable(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            data = os.read(fd, _READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._end(exc)
            return
        if not data:
            self._eof = True
            self._end(None)
            return
        splitter = self._splitter
        overruns = splitter.overruns
        packets = splitter.feed(data)
        if splitter.overruns != overruns:
            self._count_overruns(splitter.overruns - overruns)
        offer = self.sink.offer
        reply = self.write_ack
        for i, packet in enumerate(packets):
            h = Heard(packet, _TRANSPORT, reply=reply, wrapped=True)
            if not offer(h):
                # Backpressure rather than loss: stop reading; the task puts these as room comes.
                self._backlog.append(h)
                self._backlog.extend(Heard(p, _TRANSPORT, reply=reply, wrapped=True)
                                     for p in packets[i + 1:])
                assert self._loop is not None
                self._loop.remove_reader(fd)
                self._wakeup()
                return

    def _end(self, exc: OSError | None) -> None:
        """The port went away (EOF or an error): stop watching it; the task reopens."""
        fd = self._fd
        if fd is None:
            return
        self._fd = None
        self._ended = exc
        if self._loop is not None:
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)
        self._wakeup()

    def _wakeup(self) -> None:
        w = self._wake
        if w is not None and not w.done():
            w.set_result(None)

    # -- the port's task -------------------------------------------------------------------------

    async def run(self) -> None:
        delay = self.retry_min_s
        loop = self._loop = asyncio.get_running_loop()
        while True:
            try:
                # An executor: opening a tty may block (a USB adapter being enumerated).
                port = await loop.run_in_executor(None, self._open)
            except (OSError, serial.SerialException, ValueError) as exc:
                self._faults.log(f"open/{self.path}", "event=serial_open_failed port=%s error=%s", self.path, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)
                continue
            delay = self.retry_min_s
            try:
                self._set_open(True, port.fileno())
                _log.info("event=serial_open port=%s", self.path)
                await self._session()
                if self._eof:
                    _log.warning("event=serial_eof port=%s", self.path)
                else:
                    _log.warning("event=serial_lost port=%s error=%s", self.path, self._ended)
            except (OSError, serial.SerialException) as exc:
                _log.warning("event=serial_lost port=%s error=%s", self.path, exc)
            finally:
                self._end(None)
                self._set_open(False, None)
                # Not awaited (a cancel may be under way): closing a tty with output it cannot
                # send blocks for its closing_wait, so it happens in the executor.
                loop.run_in_executor(None, port.close)
            await asyncio.sleep(self.retry_min_s)

    def _open(self) -> serial.Serial:
        port = serial.serial_for_url(self.path, baudrate=self.baudrate, timeout=0)
        os.set_blocking(port.fileno(), False)
        return port

    async def _session(self) -> None:
        """Until the port ends: reading is the callback's; this task only puts a backlog."""
        loop, fd = self._loop, self._fd
        assert loop is not None and fd is not None
        self._splitter = framing.PacketSplitter()  # a partial packet does not span two opens
        self._out.clear()
        self._backlog.clear()
        self._ended, self._eof = None, False
        loop.add_reader(fd, self._readable)
        while self._fd is not None:
            self._wake = loop.create_future()
            await self._wake
            put = self.sink.put
            while self._backlog and self._fd is not None:
                await put(self._backlog.popleft())
            if self._fd is not None:
                loop.add_reader(fd, self._readable)

    def _set_open(self, is_open: bool, fd: int | None) -> None:
        self._fd = fd
        if is_open == self.is_open:
            return
        self.is_open = is_open
        self.metrics.serial_ports_open.inc(amount=1 if is_open else -1)
        if is_open:
            self.opens += 1
            self.metrics.serial_reopens.inc(self.path)
            self.opened.set()
        else:
            self.opened.clear()

    def _count_overruns(self, n: int) -> None:
        self.metrics.frames_in.inc(_TRANSPORT, n)
        self.metrics.rejections.inc("too_long", n)
        self._faults.log(
            "too_long/serial",
            "event=frame_rejected reason=too_long transport=serial detail=packet over %d bytes on %s",
            framing.MAX_PACKET_LEN, self.path,
        )

