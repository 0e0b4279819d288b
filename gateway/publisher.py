"""Publisher stage: outbox -> MQTT, QoS 1; a batch leaves the outbox only after its PUBACK.

One uplink session at a time: retained birth (the LWT says offline), then a pump that keeps
up to ``inflight_max`` batches in flight, in outbox order. Any error ends the session; the
next one (jittered exponential backoff) tries the next broker in the failover list and
starts again from the oldest unacknowledged batch, so a reconnect loses nothing and at worst
repeats a batch (consumers deduplicate on (node, fcnt)). The backlog found at connect drains
at ``drain_rate_batches_s``.

Bounds (docs/GATEWAY.md "Forwarding"): a broker that stops answering (hung, SIGSTOP, a dead
link) ends the session within ``2 x keepalive_s + 2`` s of its last byte (paho's keepalive),
or ``publish_timeout_s`` after a batch was sent if that is sooner; the log names the cause.
While on a broker after the first, the gateway returns to the most preferred broker whose
downlink listener (gateway/listener.py) has been connected for ``failback_s``; it says
"offline" (retained) on the broker it leaves, so only the broker it is on says "online".

Downlinks do not come through this session: gateway/listener.py receives them on every
broker; this session publishes ``.../down/ack`` when a node has applied them.

An unexpected error (a bug, a disk error reading the outbox) ends the session like a broker
error does, logged with its traceback at a bounded rate: forwarding must outlive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import time
from collections.abc import Callable
from typing import Any, Final

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.config import BrokerAddress, GatewayConfig
from gateway.metrics import Metrics
from gateway.mqttclient import (
    Credentials,
    Protocols,
    TransportLog,
    build_client,
    close,
    connect,
    describe,
    disconnected,
    force_close,
)
from gateway.outbox import Outbox, StoredBatch
from gateway.pump import pump
from gateway.ratelog import RateLimitedLog, Traceback
from urbansense.wire.senml import CONTENT_TYPE

_log = logging.getLogger(__name__)

_EVENTS_MAX: Final = 1000
_FAILBACK_CHECK_S: Final = 1.0


class _SessionEnd(Exception):
    pass


def first_cause(exc: BaseException) -> BaseException:
    """The first leaf of TaskGroup exception groups: what an operator needs to read first."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


class Publisher:
    def __init__(
        self,
        cfg: GatewayConfig,
        outbox: Outbox,
        metrics: Metrics,
        protocols: Protocols,
        credentials: Credentials,
        preferred_up_s: Callable[[int], float | None] = lambda i: None,
    ) -> None:
        """``preferred_up_s(i)``: how long broker i has been reachable (its downlink
        listener's session), None when it is not; drives the failback."""
        self.cfg = cfg
        self.mqtt = cfg.mqtt
        self.outbox = outbox
        self.metrics = metrics
        self.protocols = protocols
        self.credentials = credentials
        self.preferred_up_s = preferred_up_s
        self.topic_up = f"{cfg.topic_prefix}/up"
        self.topic_status = f"{cfg.topic_prefix}/status"
        self.topic_event = f"{cfg.topic_prefix}/event"
        self.topic_down_ack = f"{cfg.topic_prefix}/down/ack"
        # (topic, JSON) best effort: node events and downlink acks, published in order.
        self.events: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(maxsize=_EVENTS_MAX)
        self.connected = asyncio.Event()
        self.broker = ""
        self.broker_index = 0
        self.protocol = ""
        self.connected_since_s = 0.0
        self.last_error = ""
        self._wakeup = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._end = asyncio.Event()  # set: the current session ends (reason in _end_reason)
        self._end_reason = ""
        self._next_index: int | None = None  # set by a failback
        self._leave_will = False  # set by a failback whose offline went unacknowledged
        self._faults = RateLimitedLog(_log)
        outbox.add_listener(self._wakeup.set)

    def emit_event(self, event: dict[str, Any]) -> None:
        """Best effort: node events are not stored; alarms themselves ride in the outbox."""
        self._emit(self.topic_event, event)

    def emit_applied(self, ack: dict[str, Any]) -> None:
        """A node applied a downlink (gateway/downlinks.py): ``.../down/ack``, best effort."""
        self._emit(self.topic_down_ack, {**ack, "time_s": time.time()})

    def _emit(self, topic: str, payload: dict[str, Any]) -> None:
        try:
            self.events.put_nowait((topic, payload))
        except asyncio.QueueFull:
            self.metrics.events_dropped.inc()

    def end_session(self, reason: str) -> None:
        """End the current session (if any) and cut a backoff short (new credentials)."""
        self._end_reason = reason
        self._end.set()

    async def _until_ended(self) -> None:
        await self._end.wait()
        raise _SessionEnd(self._end_reason)

    # -- connection management ------------------------------------------------------------

    async def run(self) -> None:
        attempt = 0
        index = 0
        brokers = self.mqtt.brokers
        while True:
            broker = brokers[index % len(brokers)]
            self.broker_index = index % len(brokers)
            self._next_index = None
            transport = TransportLog()
            try:
                await self._session(broker, transport)
            except (aiomqtt.MqttError, OSError, ssl.SSLError, _SessionEnd) as exc:
                cause = str(exc) if isinstance(exc, _SessionEnd) else describe(exc, transport, self.mqtt.keepalive_s)
                self.last_error = cause
                if self.connected.is_set():
                    attempt = 0  # it had worked: start the backoff afresh
                    _log.warning("event=broker_lost broker=%s:%d error=%s", broker.host, broker.port, cause)
                else:
                    self.metrics.broker_errors.inc()
                    # Per cause, not per broker: a new cause (a wrong host name after a wrong
                    # CA) is logged at once, the same cause on every broker once.
                    self._faults.log(f"connect/{cause}", "event=broker_connect_failed broker=%s:%d error=%s",
                                     broker.host, broker.port, cause)
                index = self._next_index if self._next_index is not None else index + 1
                self._disconnected()
            except Exception as exc:
                # Not the broker's fault: no failover, and no backoff reset, so a fault that
                # recurs at every connect (a broken outbox) is retried ever more slowly.
                cause_exc = first_cause(exc)
                self.last_error = f"{type(cause_exc).__name__}: {cause_exc}"
                self._faults.log(
                    f"session/{type(cause_exc).__name__}",
                    "event=publisher_session_failed broker=%s:%d error=%r exc=%s",
                    broker.host, broker.port, cause_exc, Traceback(exc),
                )
                self._disconnected()
            if self._next_index is not None:
                continue  # a failback: the preferred broker is up, go now
            attempt += 1
            cap = min(self.mqtt.backoff_max_s, self.mqtt.backoff_min_s * 2 ** min(attempt, 20))
            # Full jitter; a reload (new credentials) cuts the wait short.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._end.wait(), random.uniform(self.mqtt.backoff_min_s / 2, cap))

    def _disconnected(self) -> None:
        self.connected.clear()
        self._client = None
        self.metrics.broker_connected.set(0)

    async def _session(self, broker: BrokerAddress, transport: TransportLog) -> None:
        v5, probing = self.protocols.offer_v5(broker)
        self._end.clear()  # a reload from now on ends this session (it may connect with old credentials)
        offline = json.dumps({"state": "offline", "gateway": self.cfg.gateway_id})
        client, _ = build_client(
            self.cfg, broker, v5, identifier=self.cfg.client_id, password=self.credentials.password,
            will=aiomqtt.Will(self.topic_status, offline, qos=1, retain=True),
            max_inflight=self.mqtt.inflight_max + 4,
        )
        client._client.on_log = transport  # the caller reads its last error
        client.pending_calls_threshold = self.mqtt.inflight_max + 16
        try:
            await connect(client, self.mqtt.connect_timeout_s)
        except (aiomqtt.MqttError, OSError) as exc:
            self.protocols.failed(broker, v5, exc)
            raise
        self.protocols.connected(broker, probing)
        try:
            self._client = client
            self.broker = f"{broker.host}:{broker.port}"
            self.protocol = "5" if v5 else "3.1.1"
            birth = json.dumps({"state": "online", "gateway": self.cfg.gateway_id,
                                "site": self.cfg.site, "time_s": time.time(), "broker": self.broker})
            await client.publish(self.topic_status, birth, qos=1, retain=True,
                                 timeout=self.mqtt.publish_timeout_s)
            self.connected_since_s = time.time()
            self.connected.set()
            self.metrics.broker_connected.set(1)
            self.metrics.broker_connects.inc()
            _log.info("event=broker_connected broker=%s protocol=%s", self.broker, self.protocol)
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._until_ended())
                    tg.create_task(disconnected(client))
                    tg.create_task(self._pump(client, v5))
                    tg.create_task(self._events(client))
                    tg.create_task(self._failback(client))
            except* (aiomqtt.MqttError, OSError, _SessionEnd) as eg:
                first = first_cause(eg)
                if isinstance(first, _SessionEnd):
                    raise first from None
                raise _SessionEnd(describe(first, transport, self.mqtt.keepalive_s)) from None
        finally:
            leave_will, self._leave_will = self._leave_will, False
            if leave_will:
                force_close(client)  # no DISCONNECT: the broker publishes the will
            else:
                await close(client)

    async def _failback(self, client: aiomqtt.Client) -> None:
        """On a broker after the first: go back to the most preferred one that has been
        reachable for ``failback_s``, saying offline (retained) here first."""
        here = self.broker_index
        if here == 0:
            return
        while True:
            await asyncio.sleep(_FAILBACK_CHECK_S)
            for i in range(here):
                up_s = self.preferred_up_s(i)
                if up_s is not None and up_s >= self.mqtt.failback_s:
                    to = self.mqtt.brokers[i]
                    offline = json.dumps({"state": "offline", "gateway": self.cfg.gateway_id,
                                          "moved_to": f"{to.host}:{to.port}"})
                    # Set first: an offline this broker does not acknowledge (within
                    # publish_timeout_s) ends the session too, and it still goes to broker i,
                    # at once, not to the next in the list after a backoff. Then it leaves
                    # without DISCONNECT, so the broker publishes the will ("offline") instead.
                    self._next_index = i
                    try:
                        await client.publish(self.topic_status, offline, qos=1, retain=True,
                                             timeout=self.mqtt.publish_timeout_s)
                    except (aiomqtt.MqttError, OSError):
                        self._leave_will = True
                        raise
                    raise _SessionEnd(f"failback to {to.host}:{to.port} (reachable for {up_s:.0f} s)")

    async def announce_offline(self) -> None:
        """On a clean shutdown the LWT does not fire: say offline ourselves."""
        client = self._client
        if client is None:
            return
        offline = json.dumps({"state": "offline", "gateway": self.cfg.gateway_id})
        try:
            await client.publish(self.topic_status, offline, qos=1, retain=True, timeout=2)
        except (aiomqtt.MqttError, OSError) as exc:
            _log.info("event=offline_not_sent error=%s", exc)

    # -- the pump ------------------------------------------------------------------------------

    async def _pump(self, client: aiomqtt.Client, v5: bool) -> None:
        props: Properties | None = None
        if v5:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ContentType = CONTENT_TYPE

        async def send(b: StoredBatch) -> None:
            try:
                await client.publish(
                    self.topic_up, b.payload, qos=1, properties=props, timeout=self.mqtt.publish_timeout_s
                )
            except aiomqtt.MqttError as exc:
                if "timed out" in str(exc).lower():  # aiomqtt's "Operation timed out" names nothing
                    raise aiomqtt.MqttError(
                        f"publish_timeout: no PUBACK within publish_timeout_s ({self.mqtt.publish_timeout_s:g} s)"
                    ) from exc
                raise

        await pump(self.outbox, self.mqtt, self.metrics, self._wakeup, send)

    async def _events(self, client: aiomqtt.Client) -> None:
        while True:
            topic, payload = await self.events.get()
            await client.publish(topic, json.dumps(payload), qos=1, timeout=self.mqtt.publish_timeout_s)
            if topic == self.topic_event:
                self.metrics.events.inc(str(payload.get("event", "")))
