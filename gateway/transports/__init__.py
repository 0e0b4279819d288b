"""Ingest transports: each turns a medium into ``flow.Heard`` items for the verify stage.

Every transport is a ``Transport``; ``build`` makes the configured ones, so the gateway runs
and reports them without knowing which media exist (as bleak's ``BleakScanner`` picks its
backend in one place). Serial ports put with backpressure (a node keeps unacked frames);
BLE puts without waiting and counts a full queue as a drop (an advert cannot wait).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from gateway.config import GatewayConfig
from gateway.flow import Heard
from gateway.metrics import Metrics

__all__ = ["Transport", "build"]


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


def build(config: GatewayConfig, ingress: asyncio.Queue[Heard], metrics: Metrics) -> list[Transport]:
    """The transports the configuration enables, serial ports first."""
    from gateway.transports.serial import SerialPort

    out: list[Transport] = [
        SerialPort(p, config.serial.baudrate, ingress, metrics,
                   config.serial.retry_min_s, config.serial.retry_max_s)
        for p in config.serial.ports
    ]
    if config.ble.enabled:
        from gateway.transports.ble import BleTransport

        def put_nowait(h: Heard) -> None:
            try:
                ingress.put_nowait(h)
            except asyncio.QueueFull:
                metrics.queue_drops.inc("ingress")

        out.append(BleTransport(config.ble, put_nowait, metrics))
    return out
