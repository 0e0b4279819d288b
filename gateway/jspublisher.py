"""Publisher stage, JetStream backend: outbox -> NATS JetStream; a batch leaves the outbox only
after the stream's own acknowledgement.

Why (docs/CITY.md "What a PUBACK means"): nats-server 2.9's MQTT listener sends the PUBACK of a
QoS 1 PUBLISH once the message is in its own ``$MQTT_msgs`` stream; the stream that captures
the uplink subject receives a plain core-NATS copy that nobody acknowledges, so a copy routed
to a stream leader that dies, or published while the stream elects a new one, is lost after
the gateway deleted the batch. A JetStream publish is a request: the stream's leader replies
(``PubAck``) only once a quorum of its replicas has the message, and "no responders" or a
timeout leaves the batch in the outbox.

Contract, the same as the MQTT publisher's: up to ``mqtt.inflight_max`` batches in flight in
outbox order; any failure (a publish not acked within ``mqtt.publish_timeout_s``, no stream
leader, the connection lost) ends the session, and the next one (jittered exponential backoff,
``mqtt.backoff_min_s`` .. ``backoff_max_s``) starts again from the oldest batch still in the
outbox. A batch sent twice (its ack lost, or a session ended with it in flight) carries the
same ``Nats-Msg-Id`` (gateway, batch id, a hash of the bytes), so the stream stores it once
within its duplicate window; after that the collector's keys absorb it.

Failover between the cluster's nodes is nats-py's: ``publish.servers`` in order, reconnecting
to the next on a lost connection. Status ("online" at every session, "offline" at a clean
stop) and events go through the same connection; NATS has no last will, so a crashed
gateway's status stays "online" (its silence shows in the collector's ``last_seen``).
Downlinks still arrive through the MQTT listeners (gateway/listener.py, ``mqtt.brokers``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import ssl
import time
from typing import Any, Final

from gateway.config import GatewayConfig
from gateway.metrics import Metrics
from gateway.mqttclient import Credentials
from gateway.outbox import Outbox, StoredBatch
from gateway.publisher import first_cause
from gateway.pump import pump
from gateway.ratelog import RateLimitedLog, Traceback

_log = logging.getLogger(__name__)

_EVENTS_MAX: Final = 1000
_RECONNECTS_PER_SERVER: Final = 3


class _SessionEnd(Exception):
    pass


def subject_of(topic: str) -> str:
    """The NATS subject of an MQTT topic, as nats-server's MQTT listener maps it (ids are
    ``[a-z0-9-]``, so only the separators change)."""
    return topic.replace("/", ".")


def msg_id(gateway_id: str, batch_id: int, payload: bytes) -> str:
    """Stable across resends of one batch; the hash keeps a fresh outbox's renumbered batches
    from being taken for old ones within the stream's duplicate window."""
    return f"{gateway_id}.{batch_id}.{hashlib.blake2b(payload, digest_size=8).hexdigest()}"


class JetStreamPublisher:
    """The ``Publisher`` surface the gateway uses (run, connected, broker, protocol,
    emit_event, emit_applied, end_session, announce_offline) over a NATS connection."""

    def __init__(self, cfg: GatewayConfig, outbox: Outbox, metrics: Metrics,
                 credentials: Credentials) -> None:
        self.cfg = cfg
        self.mqtt = cfg.mqtt  # inflight, timeouts, backoff and credentials are shared
        self.outbox = outbox
        self.metrics = metrics
        self.credentials = credentials
        self.subject_up = subject_of(f"{cfg.topic_prefix}/up")
        self.subject_status = subject_of(f"{cfg.topic_prefix}/status")
        self.subject_event = subject_of(f"{cfg.topic_prefix}/event")
        self.subject_down_ack = subject_of(f"{cfg.topic_prefix}/down/ack")
        self.events: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(maxsize=_EVENTS_MAX)
        self.connected = asyncio.Event()
        self.broker = ""
        self.broker_index = 0
        self.protocol = "jetstream"
        self.connected_since_s = 0.0
        self.last_error = ""
        self._nc: Any = None
        self._js: Any = None
        self._wakeup = asyncio.Event()
        self._end = asyncio.Event()
        self._end_reason = ""
        self._renew = False
        self._faults = RateLimitedLog(_log)
        outbox.add_listener(self._wakeup.set)

    def emit_event(self, event: dict[str, Any]) -> None:
        self._emit(self.subject_event, event)

    def emit_applied(self, ack: dict[str, Any]) -> None:
        self._emit(self.subject_down_ack, {**ack, "time_s": time.time()})

    def _emit(self, subject: str, payload: dict[str, Any]) -> None:
        try:
            self.events.put_nowait((subject, payload))
        except asyncio.QueueFull:
            self.metrics.events_dropped.inc()

    def end_session(self, reason: str) -> None:
        """New credentials (SIGHUP): a new connection, nats-py's reconnects keep the old ones."""
        self._renew = True
        self._end_now(reason)

    def _end_now(self, reason: str) -> None:
        self._end_reason = reason
        self._end.set()

    async def _until_ended(self) -> None:
        await self._end.wait()
        raise _SessionEnd(self._end_reason)

    # -- connection ----------------------------------------------------------------------------

    async def _connect(self) -> None:
        import nats

        m = self.mqtt
        tls: ssl.SSLContext | None = None
        if m.tls:
            tls = ssl.create_default_context(cafile=str(m.ca_file) if m.ca_file else None)
            if m.cert_file is not None:
                tls.load_cert_chain(str(m.cert_file), str(m.key_file) if m.key_file else None)

        async def on_disconnect() -> None:
            # In-flight requests went to the lost node: end the session now, not after
            # publish_timeout_s; the next one resends them (same Nats-Msg-Id).
            self._end_now("nats connection lost")

        async def on_reconnect() -> None:
            self._note_server()
            self._end.set()  # cut a backoff short
            _log.info("event=nats_reconnected server=%s", self.broker)

        async def on_error(exc: Exception) -> None:
            self._faults.log(f"nats/{type(exc).__name__}", "event=nats_error error=%r", exc)

        self._nc = await nats.connect(
            servers=self.cfg.publish.servers, name=self.cfg.client_id,
            user=m.username or None, password=self.credentials.password,
            tls=tls, connect_timeout=m.connect_timeout_s, dont_randomize=True,
            # Bounded: nats-py's connect() retries for ever otherwise, uncounted and with the
            # credentials it started with; once it gives up, run() connects again after its backoff.
            allow_reconnect=True, max_reconnect_attempts=_RECONNECTS_PER_SERVER, reconnect_time_wait=m.backoff_min_s,
            ping_interval=m.keepalive_s, max_outstanding_pings=2,
            disconnected_cb=on_disconnect, reconnected_cb=on_reconnect, error_cb=on_error,
        )
        self._js = self._nc.jetstream(timeout=m.publish_timeout_s)
        self._note_server()

    def _note_server(self) -> None:
        url = self._nc.connected_url if self._nc is not None else None
        self.broker = f"{url.hostname}:{url.port}" if url is not None else ""
        servers = self.cfg.publish.servers
        self.broker_index = next((i for i, s in enumerate(servers) if s.endswith(self.broker)), 0)

    async def run(self) -> None:
        import nats.errors

        attempt = 0
        try:
            while True:
                try:
                    if self._renew and self._nc is not None:
                        self._renew = False
                        with contextlib.suppress(Exception):
                            await self._nc.close()
                    if self._nc is None or self._nc.is_closed:
                        await self._connect()
                    self._end.clear()  # after the close above, whose callback sets it
                    await self._session()
                except (nats.errors.Error, OSError, TimeoutError, _SessionEnd) as exc:
                    cause = f"{type(exc).__name__}: {exc}" if not isinstance(exc, _SessionEnd) else str(exc)
                    self.last_error = cause
                    if self.connected.is_set():
                        attempt = 0
                        _log.warning("event=broker_lost broker=%s error=%s", self.broker, cause)
                    else:
                        self.metrics.broker_errors.inc()
                        self._faults.log(f"connect/{type(exc).__name__}",
                                         "event=broker_connect_failed broker=%s error=%s", self.broker, cause)
                except Exception as exc:  # a bug or a disk error: logged, and forwarding goes on
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    self._faults.log(f"session/{type(exc).__name__}",
                                     "event=publisher_session_failed broker=%s error=%r exc=%s",
                                     self.broker, exc, Traceback(exc))
                self.connected.clear()
                self.metrics.broker_connected.set(0)
                attempt += 1
                cap = min(self.mqtt.backoff_max_s, self.mqtt.backoff_min_s * 2 ** min(attempt, 20))
                self._end.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._end.wait(), random.uniform(self.mqtt.backoff_min_s / 2, cap))
        finally:
            if self._nc is not None:
                with contextlib.suppress(Exception):
                    await self._nc.close()

    async def _session(self) -> None:
        if not self._nc.is_connected:
            raise _SessionEnd("nats reconnecting")
        birth = {"state": "online", "gateway": self.cfg.gateway_id, "site": self.cfg.site,
                 "time_s": time.time(), "broker": self.broker}
        await self._js.publish(self.subject_status, json.dumps(birth).encode())
        self.connected_since_s = time.time()
        self.connected.set()
        self.metrics.broker_connected.set(1)
        self.metrics.broker_connects.inc()
        _log.info("event=broker_connected broker=%s protocol=jetstream", self.broker)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._until_ended())
                tg.create_task(self._pump())
                tg.create_task(self._events())
        except BaseExceptionGroup as eg:
            raise first_cause(eg) from None

    async def announce_offline(self) -> None:
        if self._js is None or not self.connected.is_set():
            return
        offline = {"state": "offline", "gateway": self.cfg.gateway_id}
        try:
            await self._js.publish(self.subject_status, json.dumps(offline).encode(), timeout=2)
        except Exception as exc:
            _log.info("event=offline_not_sent error=%r", exc)

    # -- the pump ----------------------------------------------------------------------------

    async def _pump(self) -> None:
        async def send(b: StoredBatch) -> None:
            # Raises on a timeout, "no responders" (no stream leader) or a stream error: the
            # batch stays in the outbox and the session ends.
            await self._js.publish(self.subject_up, b.payload,
                                   headers={"Nats-Msg-Id": msg_id(self.cfg.gateway_id, b.batch_id, b.payload)})

        await pump(self.outbox, self.mqtt, self.metrics, self._wakeup, send)

    async def _events(self) -> None:
        while True:
            subject, payload = await self.events.get()
            data = json.dumps(payload).encode()
            if subject == self.subject_down_ack:  # not captured by the stream: core NATS
                await self._nc.publish(subject, data)
            else:
                await self._js.publish(subject, data)
            if subject == self.subject_event:
                self.metrics.events.inc(str(payload.get("event", "")))
