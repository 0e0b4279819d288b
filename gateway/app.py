"""The gateway: stages wired with bounded queues.

    transports --ingress--> verify --verdicts--> batch -> outbox (commit, then acks) -> publisher

In-process use (demo, bench, tests)::

    gw = Gateway(load_config("gateway.toml"))
    task = asyncio.create_task(gw.run())
    await gw.started.wait()
    gw.feed(frame_bytes, transport="bench")     # straight into verify
    await gw.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any

from gateway.batcher import Batcher
from gateway.config import GatewayConfig, check_secret_file
from gateway.health import Health
from gateway.metrics import Metrics
from gateway.outbox import Outbox
from gateway.publisher import Publisher
from gateway.registry import Registry, load_registry
from gateway.replay import ReplayTable
from gateway.transports.ble import BleTransport
from gateway.transports.serial import SerialPort
from gateway.verify import Heard, Verdict, Verifier

_log = logging.getLogger(__name__)
HISTORY_LEN = 300  # samples for the status page charts


class Gateway:
    def __init__(self, config: GatewayConfig, registry: Registry | None = None) -> None:
        config.validate()
        self.config = config
        self.registry = registry if registry is not None else load_registry(config.registry)
        self.metrics = Metrics()
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()
        self.ingress: asyncio.Queue[Heard] = asyncio.Queue(config.queue_size)
        self.verdicts: asyncio.Queue[Verdict] = asyncio.Queue(config.queue_size)
        self.history: deque[dict[str, float]] = deque(maxlen=HISTORY_LEN)
        self.serial_ports = [
            SerialPort(p, config.serial.baudrate, self.ingress, self.metrics,
                       config.serial.retry_min_s, config.serial.retry_max_s)
            for p in config.serial.ports
        ]
        self.ble = (
            BleTransport(config.ble, self._put_ble, self.metrics) if config.ble.enabled else None
        )
        if config.mqtt.password_file is not None:  # refuse a readable secret before starting
            check_secret_file(config.mqtt.password_file, "mqtt.password_file")
        self.started_s = 0.0
        self.http_port = 0
        self._stop = asyncio.Event()
        # Built in run(): they open files.
        self.outbox: Outbox | None = None
        self.batcher: Batcher | None = None
        self.publisher: Publisher | None = None
        self.verifier: Verifier | None = None
        self.health: Health | None = None

    # -- feeding ---------------------------------------------------------------------------

    def _put_ble(self, h: Heard) -> None:
        try:
            self.ingress.put_nowait(h)
        except asyncio.QueueFull:
            self.metrics.queue_drops.inc("ingress")

    def feed(
        self, data: bytes, transport: str = "direct", rssi_dbm: int | None = None,
        wrapped: bool = False,
    ) -> bool:
        """Put raw frame bytes (or a serial packet, wrapped=True) before verify. False if full."""
        try:
            self.ingress.put_nowait(Heard(data, transport, rssi_dbm, None, wrapped))
            return True
        except asyncio.QueueFull:
            self.metrics.queue_drops.inc("ingress")
            return False

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        cfg = self.config
        self.outbox = Outbox(cfg.outbox_path, cfg.outbox.max_bytes, self.metrics, cfg.outbox.synchronous)
        replay = ReplayTable(self.outbox.load_nodes())
        self.verifier = Verifier(self.registry, replay, self.metrics)
        self.publisher = Publisher(
            cfg, self.outbox, self.metrics,
            on_downlink=lambda n, c: self._batcher().queue_commands(n, c),
            known_node=lambda n: self.registry.get(n) is not None,
        )
        self.health = Health(cfg.health, self.registry, self.publisher.emit_event)
        self.batcher = Batcher(cfg.batch, self.outbox, self.registry, replay, self.health, self.metrics)
        self.started_s = time.time()
        server = None
        if cfg.http.enabled:
            from gateway.statuspage import start_http

            server = await start_http(self, cfg.http.listen, cfg.http.port)
            self.http_port = server.sockets[0].getsockname()[1]
        transports: list[asyncio.Task[None]] = [
            asyncio.create_task(p.run(), name=f"serial {p.path}") for p in self.serial_ports
        ]
        if self.ble is not None:
            transports.append(asyncio.create_task(self.ble.run(), name="ble"))
        verify_task = asyncio.create_task(self._verify_loop(), name="verify")
        batch_task = asyncio.create_task(self.batcher.run(self.verdicts), name="batch")
        publish_task = asyncio.create_task(self.publisher.run(), name="publish")
        chores = asyncio.create_task(self._chores(), name="chores")
        _log.info("event=gateway_started site=%s gateway=%s nodes=%d http_port=%d",
                  cfg.site, cfg.gateway_id, len(self.registry), self.http_port)
        self.started.set()
        try:
            await self._stop.wait()
        finally:
            # Graceful: stop hearing, push everything heard through verify into the outbox.
            for t in transports:
                t.cancel()
            await asyncio.gather(*transports, return_exceptions=True)
            verify_task.cancel()
            batch_task.cancel()
            chores.cancel()
            await asyncio.gather(verify_task, batch_task, chores, return_exceptions=True)
            while not self.verdicts.empty():
                self.batcher.add(self.verdicts.get_nowait())
            while not self.ingress.empty():
                v = self.verifier.process(self.ingress.get_nowait())
                if v is not None:
                    self.batcher.add(v)
            self.batcher.flush()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.publisher.announce_offline(), 3)
            publish_task.cancel()
            await asyncio.gather(publish_task, return_exceptions=True)
            if server is not None:
                server.close()
            self.outbox.close()
            _log.info("event=gateway_stopped")
            self.stopped.set()

    async def stop(self) -> None:
        """Flush the batcher into the outbox and stop; returns when everything is closed."""
        self._stop.set()
        if self.started.is_set():
            await self.stopped.wait()

    def _batcher(self) -> Batcher:
        assert self.batcher is not None
        return self.batcher

    async def _verify_loop(self) -> None:
        assert self.verifier is not None
        process = self.verifier.process
        while True:
            v = process(await self.ingress.get())
            if v is not None:
                await self.verdicts.put(v)
            # Drain what is queued without a scheduler round trip per frame (throughput).
            while not self.ingress.empty() and not self.verdicts.full():
                v = process(self.ingress.get_nowait())
                if v is not None:
                    self.verdicts.put_nowait(v)

    async def _chores(self) -> None:
        assert self.outbox is not None and self.health is not None
        last_health = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            self.outbox.flush_acks()
            self._sample()
            if time.monotonic() - last_health >= self.config.health.check_interval_s:
                last_health = time.monotonic()
                self.health.check_silent()

    def _sample(self) -> None:
        m = self.metrics
        self.history.append({
            "t": time.time(),
            "frames_in": m.frames_in.total(),
            "accepted": m.frames_accepted.total(),
            "published": m.published_readings.total(),
            "rejected": m.rejections.total(),
            "outbox_batches": m.outbox_depth.get(),
            "outbox_bytes": m.outbox_bytes.get(),
        })

    # -- status ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What /api/status serves and ``urbansense gateway status`` prints."""
        m = self.metrics
        pub = self.publisher
        readings = m.readings_committed.total()
        return {
            "site": self.config.site,
            "gateway": self.config.gateway_id,
            "uptime_s": time.time() - self.started_s if self.started_s else 0.0,
            "broker": {
                "connected": bool(pub and pub.connected.is_set()),
                "address": pub.broker if pub else "",
                "protocol": pub.protocol if pub else "",
                "since_s": pub.connected_since_s if pub else 0.0,
                "last_error": pub.last_error if pub else "",
            },
            "frames_in": m.frames_in.values,
            "accepted": m.frames_accepted.total(),
            "rejections": {k: v for k, v in m.rejections.values.items() if v},
            "duplicates": m.duplicates.total(),
            "acks_sent": m.acks_sent.total(),
            "outbox": {
                "batches": m.outbox_depth.get(),
                "bytes": m.outbox_bytes.get(),
                "max_bytes": self.config.outbox.max_bytes,
                "dropped_readings": m.outbox_dropped_readings.total(),
                "disk_bytes_per_reading": m.disk_bytes_written.total() / readings if readings else 0.0,
            },
            "published": {"batches": m.published_batches.total(),
                          "readings": m.published_readings.total(),
                          "latency_p50_s": m.publish_latency.quantile(0.5),
                          "latency_p99_s": m.publish_latency.quantile(0.99)},
            "serial": [{"port": p.path, "open": p.is_open} for p in self.serial_ports],
            "ble": None if self.ble is None else {"healthy": self.ble.healthy,
                                                  "recovery_step": self.ble.step},
            "nodes": [h.as_json() for h in (self.health.nodes.values() if self.health else ())],
            "history": list(self.history),
        }
