"""Serial transport: COBS packets from any number of ports, acks written back.

Packets longer than framing.MAX_PACKET_LEN (line noise, a wrong baud rate, a megabyte with no
delimiter) are discarded up to the next delimiter without being buffered, and each is counted
as a frame in and a ``too_long`` rejection (docs/PROTOCOL.md section 7).

A port is named by its stable path (``/dev/serial/by-id/...`` where one exists). When it
disappears (USB replug, pty closed) the task retries with backoff and picks it up again when
the path comes back, under whatever ttyUSB number the kernel gave it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import serial
import serial_asyncio_fast

from gateway.flow import Heard
from gateway.metrics import Metrics
from gateway.ratelog import RateLimitedLog
from urbansense.wire import framing

_log = logging.getLogger(__name__)
_READ_SIZE = 4096
_TRANSPORT = "serial"


class SerialPort:
    """One serial port (a ``Transport``): COBS packets in, acks out, reopened when it returns."""

    kind = _TRANSPORT
    def __init__(
        self,
        path: str,
        baudrate: int,
        ingress: asyncio.Queue[Heard],
        metrics: Metrics,
        retry_min_s: float = 0.2,
        retry_max_s: float = 30.0,
    ) -> None:
        self.path = path
        self.baudrate = baudrate
        self.ingress = ingress
        self.metrics = metrics
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.is_open = False
        self.opened = asyncio.Event()  # set at every successful open (tests wait on it)
        self.opens = 0
        self._writer: asyncio.StreamWriter | None = None
        self._faults = RateLimitedLog(_log)

    @property
    def name(self) -> str:
        return self.path

    def status(self) -> dict[str, Any]:
        return {"port": self.path, "open": self.is_open}

    def write_ack(self, frame: bytes) -> None:
        """Reply callback for verify.Heard: the ack goes to this port's current connection."""
        w = self._writer
        if w is None or w.is_closing():
            raise ConnectionError(f"{self.path} not open")
        w.write(framing.wrap(frame))

    async def run(self) -> None:
        delay = self.retry_min_s
        while True:
            try:
                reader, writer = await serial_asyncio_fast.open_serial_connection(
                    url=self.path, baudrate=self.baudrate
                )
            except (OSError, serial.SerialException, ValueError) as exc:
                self._faults.log(f"open/{self.path}", "event=serial_open_failed port=%s error=%s", self.path, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)
                continue
            delay = self.retry_min_s
            self._set_open(True, writer)
            _log.info("event=serial_open port=%s", self.path)
            try:
                await self._read(reader)
                _log.warning("event=serial_eof port=%s", self.path)
            except (OSError, serial.SerialException) as exc:
                _log.warning("event=serial_lost port=%s error=%s", self.path, exc)
            finally:
                self._set_open(False, None)
                writer.close()
            await asyncio.sleep(self.retry_min_s)

    def _set_open(self, is_open: bool, writer: asyncio.StreamWriter | None) -> None:
        self._writer = writer
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

    async def _read(self, reader: asyncio.StreamReader) -> None:
        splitter = framing.PacketSplitter()
        overruns = 0
        while True:
            data = await reader.read(_READ_SIZE)
            if not data:
                return
            packets = splitter.feed(data)
            if splitter.overruns != overruns:
                self._count_overruns(splitter.overruns - overruns)
                overruns = splitter.overruns
            for packet in packets:
                # Backpressure rather than loss: the node keeps unacked frames anyway.
                await self.ingress.put(
                    Heard(packet, _TRANSPORT, reply=self.write_ack, wrapped=True)
                )

    def _count_overruns(self, n: int) -> None:
        self.metrics.frames_in.inc(_TRANSPORT, n)
        self.metrics.rejections.inc("too_long", n)
        self._faults.log(
            "too_long/serial",
            "event=frame_rejected reason=too_long transport=serial detail=packet over %d bytes on %s",
            framing.MAX_PACKET_LEN, self.path,
        )
