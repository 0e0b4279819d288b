"""Ingest transports: each turns a medium into ``flow.Heard`` items for the verify stage.

Every transport is a ``Transport``; ``build`` makes the configured ones, so the gateway runs
and reports them without knowing which media exist (as bleak's ``BleakScanner`` picks its
backend in one place). Each hands its frames to a ``Sink`` (the gateway, gateway/ingest.py),
whose ``offer`` returns False when the gateway's ingress queue is full: a serial port then
stops reading and ``put``s what it read, waiting for room (backpressure: a node keeps unacked
frames); BLE counts a drop (an advert cannot wait).
"""

from __future__ import annotations

from typing import Any, Protocol

from gateway.config import GatewayConfig
from gateway.flow import Heard
from gateway.metrics import Metrics

__all__ = ["Sink", "Transport", "build"]


class Transport(Protocol):
    """One source of frames, run by the gateway as a supervised stage."""

    @property
    def kind(self) -> str:
        """The medium ("serial", "ble"): the stage name and the ``transport`` label."""
        ...

    @property
    def name(self) -> str:
        """This instance (a port path, an adapter), for logs and the stage's task name."""
        ...

    async def run(self) -> None:
        """Hear for ever (reopening what goes away); cancelled at shutdown."""
        ...

    def status(self) -> dict[str, Any]:
        """What /api/status shows of it."""
        ...


class Sink(Protocol):
    """Where transports hand their frames (the gateway: gateway/ingest.py)."""

    def offer(self, h: Heard) -> bool:
        """Take ``h`` now; False when there is no room (the caller keeps it)."""
        ...

    async def put(self, h: Heard) -> None:
        """Take ``h``, waiting for room (behind everything offered before it)."""
        ...


def build(config: GatewayConfig, sink: Sink, metrics: Metrics) -> list[Transport]:
    """The transports the configuration enables, serial ports first."""
    from gateway.transports.serial import SerialPort

    out: list[Transport] = [
        SerialPort(p, config.serial.baudrate, sink, metrics,
                   config.serial.retry_min_s, config.serial.retry_max_s)
        for p in config.serial.ports
    ]
    if config.ble.enabled:
        from gateway.transports.ble import BleTransport

        offer = sink.offer

        def put(h: Heard) -> None:
            if not offer(h):
                metrics.queue_drops.inc("ingress")

        out.append(BleTransport(config.ble, put, metrics))
    return out
