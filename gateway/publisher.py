"""Publisher stage: outbox -> MQTT, QoS 1; a batch leaves the outbox only after its PUBACK.

One session per connection: retained birth (the LWT says offline), downlink subscription,
then a pump that keeps up to ``inflight_max`` batches in flight, in outbox order. Any error
ends the session; the next one (jittered exponential backoff, next broker in the failover
list) starts again from the oldest unacknowledged batch, so a reconnect loses nothing and
at worst repeats a batch (consumers deduplicate on (node, fcnt)). The backlog found at
connect drains at ``drain_rate_batches_s``.

An unexpected error (a bug, a disk error reading the outbox) ends the session like a broker
error does, logged with its traceback at a bounded rate: forwarding must outlive it. No
downlink message, however malformed, ends a session.
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
from collections.abc import Callable
from typing import Any, Final

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.batcher import commands_from_json
from gateway.config import BrokerAddress, GatewayConfig, read_secret
from gateway.metrics import Metrics
from gateway.outbox import Outbox
from gateway.ratelog import RateLimitedLog, Traceback
from urbansense.wire.senml import CONTENT_TYPE

_log = logging.getLogger(__name__)

DownlinkSink = Callable[[int, dict[int, object]], None]
"""Queues commands for a node; ValueError when they are refused (the ack would not fit)."""
_UNSUPPORTED_PROTOCOL = (1, 132)  # CONNACK: 3.1.1 "unacceptable version", 5 "unsupported"
# A downlink is a small JSON object; bigger is refused before parsing (a deep '[[[...' would
# otherwise cost a parse to the recursion limit).
MAX_DOWNLINK_BYTES: Final = 4096


class _SessionEnd(Exception):
    pass


def first_cause(exc: BaseException) -> BaseException:
    """The first leaf of TaskGroup exception groups: what an operator needs to read first."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _force_close(client: aiomqtt.Client) -> None:
    """aiomqtt leaves paho's socket and misc task behind when CONNECT fails or is cancelled."""
    paho = client._client
    sock = paho.socket()
    if sock is not None:
        with contextlib.suppress(OSError):
            paho._sock_close()  # type: ignore[attr-defined]
    task = getattr(client, "_misc_task", None)
    if task is not None:
        task.cancel()


class Publisher:
    def __init__(
        self,
        cfg: GatewayConfig,
        outbox: Outbox,
        metrics: Metrics,
        on_downlink: DownlinkSink,
        known_node: Callable[[int], bool],
    ) -> None:
        self.cfg = cfg
        self.mqtt = cfg.mqtt
        self.outbox = outbox
        self.metrics = metrics
        self.on_downlink = on_downlink
        self.known_node = known_node
        self.topic_up = f"{cfg.topic_prefix}/up"
        self.topic_status = f"{cfg.topic_prefix}/status"
        self.topic_event = f"{cfg.topic_prefix}/event"
        self.topic_down = f"{cfg.topic_prefix}/down"
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)
        self.connected = asyncio.Event()
        self.broker = ""
        self.protocol = ""
        self.connected_since_s = 0.0
        self.last_error = ""
        self._wakeup = asyncio.Event()
        self._v311: set[tuple[str, int]] = set()  # brokers that speak 3.1.1 only
        self._probe_v311: set[tuple[str, int]] = set()  # next attempt tries 3.1.1
        self._client: aiomqtt.Client | None = None
        self._password, self._credentials = self._read_credentials()
        self._end = asyncio.Event()  # set: the current session ends (reason in _end_reason)
        self._end_reason = ""
        self._faults = RateLimitedLog(_log)
        outbox.add_listener(self._wakeup.set)

    def emit_event(self, event: dict[str, Any]) -> None:
        """Best effort: node events are not stored; alarms themselves ride in the outbox."""
        try:
            self.events.put_nowait(event)
        except asyncio.QueueFull:
            self.metrics.events_dropped.inc()

    def _read_credentials(self) -> tuple[str | None, bytes]:
        """The password, and a fingerprint of every credential file: the client certificate
        and key are read by each connect, so a change needs only a new session."""
        m = self.mqtt
        password = read_secret(m.password_file, "mqtt.password_file") if m.password_file else None
        digest = hashlib.sha256((password or "").encode())
        for path in (m.cert_file, m.key_file):
            if path is not None:
                digest.update(path.read_bytes())
        return password, digest.digest()

    def reload_credentials(self) -> None:
        """SIGHUP (Gateway.reload): read the credentials again; if they changed, the session
        reconnects with them. ConfigError (nothing replaced) when a file is missing or open."""
        password, fingerprint = self._read_credentials()
        if fingerprint == self._credentials:
            _log.info("event=credentials_unchanged")
            return
        self._password, self._credentials = password, fingerprint
        _log.warning("event=credentials_reloaded reconnect=%s", self.connected.is_set())
        self.end_session("credentials reloaded")

    def end_session(self, reason: str) -> None:
        """End the current session (if any); the next connects at once, with the same order."""
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
            try:
                await self._session(broker)
            except (aiomqtt.MqttError, OSError, ssl.SSLError, _SessionEnd) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                if self.connected.is_set():
                    attempt = 0  # it had worked: start the backoff afresh
                    _log.warning("event=broker_lost broker=%s:%d error=%s", broker.host, broker.port, exc)
                else:
                    self.metrics.broker_errors.inc()
                    self._faults.log(
                        f"connect/{broker.host}:{broker.port}",
                        "event=broker_connect_failed broker=%s:%d error=%s",
                        broker.host, broker.port, exc,
                    )
                    index += 1  # fail over to the next broker
                self._disconnected()
            except Exception as exc:
                # Not the broker's fault: no failover, and no backoff reset, so a fault that
                # recurs at every connect (a broken outbox) is retried ever more slowly.
                cause = first_cause(exc)
                self.last_error = f"{type(cause).__name__}: {cause}"
                self._faults.log(
                    f"session/{type(cause).__name__}",
                    "event=publisher_session_failed broker=%s:%d error=%r exc=%s",
                    broker.host, broker.port, cause, Traceback(exc),
                )
                self._disconnected()
            attempt += 1
            cap = min(self.mqtt.backoff_max_s, self.mqtt.backoff_min_s * 2 ** min(attempt, 20))
            # Full jitter; a reload (new credentials) cuts the wait short.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._end.wait(), random.uniform(self.mqtt.backoff_min_s / 2, cap))

    def _disconnected(self) -> None:
        self.connected.clear()
        self._client = None
        self.metrics.broker_connected.set(0)

    def _client_for(self, broker: BrokerAddress, v5: bool) -> aiomqtt.Client:
        tls = None
        if self.mqtt.tls:
            tls = aiomqtt.TLSParameters(
                ca_certs=str(self.mqtt.ca_file) if self.mqtt.ca_file else None,
                certfile=str(self.mqtt.cert_file) if self.mqtt.cert_file else None,
                keyfile=str(self.mqtt.key_file) if self.mqtt.key_file else None,
            )
        offline = json.dumps({"state": "offline", "gateway": self.cfg.gateway_id})
        client = aiomqtt.Client(
            broker.host,
            broker.port,
            username=self.mqtt.username or None,
            password=self._password,
            identifier=self.cfg.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            will=aiomqtt.Will(self.topic_status, offline, qos=1, retain=True),
            keepalive=self.mqtt.keepalive_s,
            timeout=self.mqtt.connect_timeout_s,
            tls_params=tls,
            max_inflight_messages=self.mqtt.inflight_max + 4,
            logger=logging.getLogger("gateway.mqtt"),
        )
        client.pending_calls_threshold = self.mqtt.inflight_max + 16
        return client

    async def _session(self, broker: BrokerAddress) -> None:
        key = (broker.host, broker.port)
        auto = self.mqtt.protocol == "auto"
        probing = auto and key in self._probe_v311
        self._probe_v311.discard(key)
        v5 = self.mqtt.protocol == "5" or (auto and key not in self._v311 and not probing)
        self._end.clear()  # a reload from now on ends this session (it may connect with old credentials)
        client = self._client_for(broker, v5)
        # The connect runs in an executor thread that a cancel cannot stop: shield it and
        # finish it before closing, or its socket would outlive us.
        enter = asyncio.ensure_future(client.__aenter__())
        try:
            await asyncio.shield(enter)
        except asyncio.CancelledError:
            await asyncio.wait({enter}, timeout=self.mqtt.connect_timeout_s + 1)
            if enter.done() and not enter.cancelled() and enter.exception() is None:
                with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):
                    await asyncio.wait_for(client.__aexit__(None, None, None), 2)
            _force_close(client)
            raise
        except MqttConnectError as exc:
            _force_close(client)
            if v5 and auto and exc.rc in _UNSUPPORTED_PROTOCOL:
                _log.warning("event=mqtt5_refused broker=%s:%d fallback=3.1.1", *key)
                self._v311.add(key)
            raise
        except aiomqtt.MqttError as exc:
            _force_close(client)
            # Some 3.1.1-only brokers drop or ignore an MQTT 5 CONNECT instead of refusing it:
            # after a v5 attempt that got no answer (not a refused TCP connect), probe 3.1.1.
            if v5 and auto and "refused" not in str(exc).lower():
                self._probe_v311.add(key)
            raise
        except BaseException:
            _force_close(client)
            raise
        if probing:
            _log.warning("event=mqtt5_refused broker=%s:%d fallback=3.1.1 reason=no_connack", *key)
            self._v311.add(key)
        try:
            self._client = client
            self.broker = f"{broker.host}:{broker.port}"
            self.protocol = "5" if v5 else "3.1.1"
            birth = json.dumps({"state": "online", "gateway": self.cfg.gateway_id,
                                "site": self.cfg.site, "time_s": time.time()})
            await client.publish(self.topic_status, birth, qos=1, retain=True)
            await client.subscribe(self.topic_down, qos=1)
            self.connected_since_s = time.time()
            self.connected.set()
            self.metrics.broker_connected.set(1)
            self.metrics.broker_connects.inc()
            _log.info("event=broker_connected broker=%s protocol=%s", self.broker, self.protocol)
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._until_ended())
                    tg.create_task(self._pump(client, v5))
                    tg.create_task(self._downlinks(client))
                    tg.create_task(self._events(client))
            except* (aiomqtt.MqttError, OSError, _SessionEnd) as eg:
                raise _SessionEnd(str(first_cause(eg))) from None
        finally:
            with contextlib.suppress(aiomqtt.MqttError, OSError):
                await client.__aexit__(None, None, None)

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
        window = asyncio.Semaphore(self.mqtt.inflight_max)
        ids = self.outbox.pending_ids()
        backlog_last = ids[-1] if ids else 0
        interval_s = 1.0 / self.mqtt.drain_rate_batches_s
        next_s = time.monotonic()
        last_id = 0
        async with asyncio.TaskGroup() as tg:
            while True:
                self._wakeup.clear()
                batches = self.outbox.peek(last_id, self.mqtt.inflight_max)
                if not batches:
                    await self._wakeup.wait()
                    continue
                for b in batches:
                    await window.acquire()
                    if b.batch_id <= backlog_last:
                        now = time.monotonic()
                        if next_s > now:
                            await asyncio.sleep(next_s - now)
                        next_s = max(now, next_s) + interval_s
                    last_id = b.batch_id
                    tg.create_task(self._publish(client, b.batch_id, b.payload, b.frames, props, window))

    async def _publish(
        self,
        client: aiomqtt.Client,
        batch_id: int,
        payload: bytes,
        frames: int,
        props: Properties | None,
        window: asyncio.Semaphore,
    ) -> None:
        t0 = time.monotonic()
        try:
            await client.publish(
                self.topic_up, payload, qos=1, properties=props, timeout=self.mqtt.publish_timeout_s
            )
        finally:
            window.release()
        self.metrics.publish_latency.observe(time.monotonic() - t0)
        self.outbox.ack(batch_id)
        self.metrics.published_batches.inc()
        self.metrics.published_bytes.inc(amount=len(payload))
        self.metrics.published_readings.inc(amount=frames)
        self.metrics.frames_out_ledger.published(batch_id, frames)

    async def _events(self, client: aiomqtt.Client) -> None:
        while True:
            event = await self.events.get()
            await client.publish(self.topic_event, json.dumps(event), qos=1)
            self.metrics.events.inc(str(event.get("event", "")))

    async def _downlinks(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            self._downlink(message.payload)

    def _downlink(self, payload: object) -> None:
        """Parse, check and store one downlink message; nothing in it may end the session."""
        try:
            node_id, commands = self._parse_downlink(payload)
            self.on_downlink(node_id, commands)  # ValueError: the ack would not fit
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            self._refused("invalid", exc)
            return
        except Exception as exc:  # storing it failed (sqlite), or a bug: the sender may retry
            self._refused("failed", exc)
            return
        self.metrics.downlinks.inc("queued")
        _log.info("event=downlink_queued node=%08x commands=%s", node_id, sorted(commands))

    def _refused(self, result: str, exc: Exception) -> None:
        self.metrics.downlinks.inc(result)
        if result == "invalid":  # bad input from outside: no traceback needed
            self._faults.log("downlink", "event=downlink_invalid error=%s", exc)
        else:
            self._faults.log(f"downlink/{type(exc).__name__}",
                             "event=downlink_not_stored error=%r exc=%s", exc, Traceback(exc))

    def _parse_downlink(self, payload: object) -> tuple[int, dict[int, object]]:
        if isinstance(payload, bytes | bytearray):
            text: str | bytes = bytes(payload)
        elif isinstance(payload, str):
            text = payload
        else:
            raise ValueError(f"payload of type {type(payload).__name__}")
        if len(text) > MAX_DOWNLINK_BYTES:
            raise ValueError(f"{len(text)} bytes, more than {MAX_DOWNLINK_BYTES}")
        obj = json.loads(text)
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
        node_id = obj["node_id"]
        if type(node_id) is not int or not self.known_node(node_id):
            raise ValueError(f"unknown node_id {node_id!r}")
        return node_id, commands_from_json(obj.get("commands"))
