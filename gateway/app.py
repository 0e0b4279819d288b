"""The gateway: stages wired with bounded queues.

    transports --ingress--> verify --verdicts--> batch -> outbox (commit, then acks) -> publisher

(a frame with nothing queued ahead of it skips the two queues: gateway/ingest.py)

In-process use (demo, bench, tests)::

    gw = Gateway(load_config("gateway.toml"))
    task = asyncio.create_task(gw.run())
    await gw.started.wait()
    gw.feed(frame_bytes, transport="bench")     # straight into verify
    await gw.stop()

Each long-running stage runs under a supervisor: one that ends with an unexpected error (a
bug, a disk error) is logged at a bounded rate, counted in ``stage_restarts_total{stage}`` and
restarted after a short backoff. The process never exits for it: a gateway that keeps
accepting but stops forwarding is the failure this prevents.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Final

from gateway import transports
from gateway.batcher import Batcher
from gateway.config import GatewayConfig
from gateway.downlinks import Downlinks
from gateway.errors import ConfigError
from gateway.flow import Heard, Verdict
from gateway.health import Health
from gateway.ingest import Ingest
from gateway.jspublisher import JetStreamPublisher
from gateway.listener import DownlinkListener
from gateway.metrics import Metrics
from gateway.mqttclient import Credentials, Protocols
from gateway.outbox import SD_PAGE_SIZE, Outbox
from gateway.publisher import Publisher, first_cause
from gateway.ratelog import RateLimitedLog, Traceback
from gateway.registry import Registry, load_registry
from gateway.registry_watch import RegistryWatch
from gateway.replay import ReplayTable
from gateway.transports import Transport
from gateway.transports.ble import BleTransport
from gateway.transports.serial import SerialPort
from gateway.verify import Verifier

_log = logging.getLogger(__name__)
HISTORY_LEN = 300  # samples for the status page charts
_RESTART_MIN_S: Final = 0.1
_RESTART_MAX_S: Final = 30.0
_RESTART_RESET_S: Final = 60.0  # a stage that ran this long restarts at the minimum delay again

Stage = Callable[[], Coroutine[Any, Any, None]]


class Gateway:
    def __init__(self, config: GatewayConfig, registry: Registry | None = None) -> None:
        config.validate()
        self.config = config
        self.registry = registry if registry is not None else load_registry(config.registry)
        self.metrics = Metrics()
        self.registry_watch = RegistryWatch(config.registry, self.registry, self.metrics,
                                            self._registry_changed)
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()
        self.ingress: asyncio.Queue[Heard] = asyncio.Queue(config.queue_size)
        self.verdicts: asyncio.Queue[Verdict] = asyncio.Queue(config.queue_size)
        self.history: deque[dict[str, float]] = deque(maxlen=HISTORY_LEN)
        self.transports: list[Transport] = transports.build(config, self, self.metrics)
        # Typed handles for tests and tools that drive one medium.
        self.serial_ports = [t for t in self.transports if isinstance(t, SerialPort)]
        self.ble = next((t for t in self.transports if isinstance(t, BleTransport)), None)
        config.check_files()  # a missing or unreadable file, or an open secret: refused at start
        self.protocols = Protocols(config.mqtt.protocol)
        self.credentials = Credentials(config.mqtt)
        self.started_s = 0.0
        self.http_port = 0
        self._stop = asyncio.Event()
        self._faults = RateLimitedLog(_log)
        # Built in run(): they open files.
        self.ingest: Ingest | None = None
        self.outbox: Outbox | None = None
        self.batcher: Batcher | None = None
        self.publisher: Publisher | JetStreamPublisher | None = None
        self.verifier: Verifier | None = None
        self.health: Health | None = None
        self.downlinks: Downlinks | None = None
        self.listeners: list[DownlinkListener] = []

    # -- reloading (see reload() below) -------------------------------------------------------

    def _registry_changed(self, registry: Registry, added: list[int], gone: list[int]) -> None:
        if self.health is not None:
            self.health.registry_changed(registry, added, gone)

    # -- feeding ---------------------------------------------------------------------------

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

    def offer(self, h: Heard) -> bool:
        """A transport's frame (gateway/ingest.py); False when the ingress queue is full."""
        ingest = self.ingest
        if ingest is not None:
            return ingest.offer(h)
        try:  # before run() built the stages: queued for them
            self.ingress.put_nowait(h)
        except asyncio.QueueFull:
            return False
        return True

    async def put(self, h: Heard) -> None:
        """A transport's frame, waiting for room in the ingress queue (behind what is queued)."""
        await self.ingress.put(h)

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        cfg = self.config
        self.outbox = Outbox(cfg.outbox_path, cfg.outbox.max_bytes, self.metrics, cfg.outbox.synchronous,
                             ack_flush_s=cfg.outbox.ack_flush_s, page_size=SD_PAGE_SIZE)
        replay = ReplayTable(self.outbox.load_nodes())
        self.verifier = Verifier(self.registry, replay, self.metrics)
        publisher: Publisher | JetStreamPublisher
        if cfg.publish.backend == "jetstream":
            publisher = JetStreamPublisher(cfg, self.outbox, self.metrics, self.credentials)
        else:
            publisher = Publisher(
                cfg, self.outbox, self.metrics, self.protocols, self.credentials,
                preferred_up_s=lambda i: self.listeners[i].connected_for_s(),
            )
        self.publisher = publisher
        self.downlinks = Downlinks(self.outbox, self.registry, publisher.emit_applied, self.metrics)
        faults = RateLimitedLog(logging.getLogger("gateway.listener"))
        self.listeners = [
            DownlinkListener(cfg, b, self.protocols, self.credentials, self.downlinks, self.metrics, faults)
            for b in cfg.mqtt.brokers
        ]
        self.started_s = time.time()
        self.health = Health(cfg.health, self.registry, self.publisher.emit_event, self.started_s)
        self.batcher = Batcher(cfg.batch, self.outbox, self.registry, replay, self.health, self.metrics,
                               self.downlinks)
        self.batcher.on_error = self._batch_failed
        self.ingest = ingest = Ingest(self.ingress, self.verdicts, self.verifier, self.batcher,
                                      self._batch_failed)
        server = None
        if cfg.http.enabled:
            from gateway.statuspage import start_http

            server = await start_http(self, cfg.http.listen, cfg.http.port)
            self.http_port = server.sockets[0].getsockname()[1]
        batcher = self.batcher
        hearing = [self._spawn(t.kind, t.run, t.name) for t in self.transports]
        verify_task = self._spawn("verify", ingest.run_verify)
        batch_task = self._spawn("batch", lambda: batcher.run(self.verdicts))
        publish_task = self._spawn("publish", publisher.run)
        listen_tasks = [self._spawn("listen", lis.run, lis.name) for lis in self.listeners]
        chores = self._spawn("chores", self._chores)
        _log.info("event=gateway_started site=%s gateway=%s nodes=%d http_port=%d",
                  cfg.site, cfg.gateway_id, len(self.registry), self.http_port)
        self.started.set()
        try:
            await self._stop.wait()
        finally:
            try:
                # Graceful: stop hearing, push everything heard through verify into the outbox.
                for t in hearing:
                    t.cancel()
                await asyncio.gather(*hearing, return_exceptions=True)
                for t in (verify_task, batch_task, chores):
                    t.cancel()
                await asyncio.gather(verify_task, batch_task, chores, return_exceptions=True)
                ingest.drain()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(publisher.announce_offline(), 3)
                for t in (publish_task, *listen_tasks):
                    t.cancel()
                await asyncio.gather(publish_task, *listen_tasks, return_exceptions=True)
            finally:
                if server is not None:
                    server.close()
                try:
                    self.outbox.close()
                except Exception:  # the disk failing at the very end: say so, still stop
                    _log.exception("event=outbox_close_failed")
                _log.info("event=gateway_stopped")
                self.stopped.set()

    def _spawn(self, stage: str, run: Stage, what: str = "") -> asyncio.Task[None]:
        name = f"{stage}:{what}" if what else stage
        return asyncio.create_task(self._supervise(stage, run, name), name=name)

    async def _supervise(self, stage: str, run: Stage, name: str) -> None:
        """Run a stage for ever: after an unexpected error or return, log, count, restart."""
        task = asyncio.current_task()
        delay_s = _RESTART_MIN_S
        while True:
            began = time.monotonic()
            try:
                await run()
                exc: BaseException = RuntimeError("stage returned")
            except asyncio.CancelledError as cancelled:
                if task is None or task.cancelling():
                    raise  # our shutdown
                exc = cancelled  # a stray cancel from inside a library: not ours to obey
            except Exception as error:
                exc = error
            if time.monotonic() - began >= _RESTART_RESET_S:
                delay_s = _RESTART_MIN_S
            self._stage_failed(stage, name, exc, delay_s)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, _RESTART_MAX_S)

    def _stage_failed(self, stage: str, name: str, exc: BaseException, restart_in_s: float) -> None:
        self.metrics.stage_restarts.inc(stage)
        cause = first_cause(exc)
        self._faults.log(
            f"stage/{name}/{type(cause).__name__}",
            "event=stage_failed stage=%s error=%r restart_in_s=%.1f exc=%s",
            name, cause, restart_in_s, Traceback(exc),
        )

    def _batch_failed(self, exc: Exception) -> None:
        """A bug in the batcher outside its task (its timer, a transport's direct hand-off):
        counted and logged as a failure of the batch stage, which goes on."""
        self._stage_failed("batch", "batch", exc, 0.0)

    def reload(self) -> None:
        """SIGHUP: re-read what may change without a restart, in one place so one signal
        reloads everything reloadable. Each step is checked before it replaces anything: a
        bad file is logged with its key and the step keeps what it had.

        Steps: the MQTT credentials (password file, client certificate and key; the session
        reconnects when they changed); the node registry (gateway/registry_watch.py, which
        also reloads it on a file change; replay state is kept). Add a step here with
        ``self._reload_step``.
        """
        _log.info("event=reload")
        self._reload_step("mqtt_credentials", self._reload_credentials)
        self._reload_step("registry", self._reload_registry)

    def _reload_step(self, step: str, run: Callable[[], None]) -> None:
        try:
            run()
        except ConfigError as exc:
            _log.error("event=reload_refused step=%s key=%s problem=%s", step, exc.key, exc.problem)
        except Exception as exc:  # a bug must not kill the signal handler's caller: say so
            _log.error("event=reload_failed step=%s error=%r exc=%s", step, exc, Traceback(exc))

    def _reload_registry(self) -> None:
        self.registry_watch.reload("sighup")

    def _reload_credentials(self) -> None:
        self.config.check_files()
        if not self.credentials.reload():
            _log.info("event=credentials_unchanged")
            return
        _log.warning("event=credentials_reloaded reconnect=true")
        if self.publisher is not None:
            self.publisher.end_session("credentials reloaded")
        for lis in self.listeners:
            lis.end_session()

    async def stop(self) -> None:
        """Flush the batcher into the outbox and stop; returns when everything is closed."""
        self._stop.set()
        if self.started.is_set():
            await self.stopped.wait()

    def _batcher(self) -> Batcher:
        assert self.batcher is not None
        return self.batcher

    async def _chores(self) -> None:
        assert self.outbox is not None and self.health is not None
        last_health = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            self._chore("flush_acks", self.outbox.flush_acks)
            self._chore("sample", self._sample)
            self._chore("registry", self._poll_registry)
            if time.monotonic() - last_health >= self.config.health.check_interval_s:
                last_health = time.monotonic()
                self._chore("check_silent", self.health.check_silent)

    def _chore(self, name: str, chore: Callable[[], None]) -> None:
        """One chore failing (a disk error deleting published batches) must not stop the others."""
        try:
            chore()
        except Exception as exc:
            self._faults.log(f"chore/{name}/{type(exc).__name__}",
                             "event=chore_failed chore=%s error=%r exc=%s", name, exc, Traceback(exc))

    def _poll_registry(self) -> None:
        self.registry_watch.poll()

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
            # One per configured broker: where downlinks are received (docs/GATEWAY.md).
            "downlink_listeners": [
                {"broker": lis.name, "connected": lis.connected_for_s() is not None,
                 "last_error": lis.last_error} for lis in self.listeners
            ],
            "downlinks_pending": len(self.downlinks.pending) if self.downlinks else 0,
            "frames_in": m.frames_in.values,
            "accepted": m.frames_accepted.total(),
            "rejections": {k: v for k, v in m.rejections.values.items() if v},
            "duplicates": m.duplicates.total(),
            "acks_sent": m.acks_sent.total(),
            "frames_out": m.frames_out.values,
            "stage_restarts": {k: v for k, v in m.stage_restarts.values.items() if v},
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
            "serial": [t.status() for t in self.transports if t.kind == "serial"],
            "registry": self.registry_watch.status(),
            # The last rejection of the 200 nodes rejected most recently (why a node is not heard).
            "rejected_nodes": {f"{n:08x}": r for n, r in list(
                (self.verifier.rejected if self.verifier else {}).items())[-200:]},
            "ble": next((t.status() for t in self.transports if t.kind == "ble"), None),
            # Every registered node, heard or not (last_seen_s null: not heard since start).
            "nodes": [h.as_json() for h in (self.health.nodes.values() if self.health else ())],
            "nodes_heard": self.health.heard if self.health else 0,
            "history": list(self.history),
        }
