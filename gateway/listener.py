"""Downlink listeners: one persistent MQTT session per configured broker, subscribed to ``down``.

Why one per broker, apart from the uplink session: the uplink goes to one broker at a time,
but an operator may publish a command to any of them (the one their tool is configured
for). Each listener keeps a session on its broker that outlives the gateway
(``persistent=True`` in gateway/mqttclient.py, client id ``<client_id>-down``, session expiry
``mqtt.session_expiry_s``), so a command published at QoS 1 while the gateway is stopped,
restarting, connected elsewhere or reconnecting waits in that broker's session.

A message is PUBACKed only after it is stored in the outbox (paho's manual ack). When
storing fails (a disk error), the session ends without the PUBACK and the broker sends the
message again on the next connect. Invalid messages are acknowledged, counted and logged
(``downlinks_total{result="invalid"}``): sending them again would change nothing. Retained
messages are ignored and counted (``result="retained"``): a retained command would be applied
again at every connect, an old one undoing a newer one.

The uplink session uses ``connected_for_s`` to fail back to a preferred broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time

import aiomqtt

from gateway.config import BrokerAddress, GatewayConfig
from gateway.downlinks import Downlinks
from gateway.metrics import Metrics
from gateway.mqttclient import (
    Credentials,
    Protocols,
    build_client,
    close,
    connect,
    describe,
    disconnected,
)
from gateway.ratelog import RateLimitedLog

_log = logging.getLogger(__name__)


class _Ended(Exception):
    pass


class DownlinkListener:
    def __init__(
        self,
        cfg: GatewayConfig,
        broker: BrokerAddress,
        protocols: Protocols,
        credentials: Credentials,
        downlinks: Downlinks,
        metrics: Metrics,
        faults: RateLimitedLog | None = None,
    ) -> None:
        """``faults``: shared by the listeners, so a cause is rate-limited, not a broker."""
        self.cfg = cfg
        self.broker = broker
        self.protocols = protocols
        self.credentials = credentials
        self.downlinks = downlinks
        self.metrics = metrics
        self.topic = f"{cfg.topic_prefix}/down"
        self.identifier = f"{cfg.client_id}-down"
        self.last_error = ""
        self._since: float | None = None  # monotonic time of the current session's CONNACK
        self._end = asyncio.Event()
        self._faults = faults or RateLimitedLog(_log)

    @property
    def name(self) -> str:
        return f"{self.broker.host}:{self.broker.port}"

    def connected_for_s(self) -> float | None:
        """How long the current session has been up; None when not connected."""
        return None if self._since is None else time.monotonic() - self._since

    def end_session(self) -> None:
        self._end.set()

    async def run(self) -> None:
        m = self.cfg.mqtt
        attempt = 0
        while True:
            try:
                await self._session()
            except (aiomqtt.MqttError, OSError, ssl.SSLError, _Ended) as exc:
                cause = str(exc) if isinstance(exc, _Ended) else describe(exc, None, m.keepalive_s)
                self.last_error = cause
                if self._since is not None:
                    attempt = 0
                    _log.warning("event=downlink_listener_lost broker=%s error=%s", self.name, cause)
                else:  # per cause, shared by every listener: the same cause is logged once
                    self._faults.log(f"connect/{cause}", "event=downlink_listener_connect_failed broker=%s error=%s",
                                     self.name, cause)
                self._since = None
            attempt += 1
            cap = min(m.backoff_max_s, m.backoff_min_s * 2 ** min(attempt, 20))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._end.wait(), random.uniform(m.backoff_min_s / 2, cap))

    async def _session(self) -> None:
        m = self.cfg.mqtt
        v5, probing = self.protocols.offer_v5(self.broker)
        self._end.clear()
        client, transport = build_client(
            self.cfg, self.broker, v5, identifier=self.identifier,
            password=self.credentials.password, persistent=True,
        )
        client._client.manual_ack_set(True)  # PUBACK once stored, not when received
        try:
            await connect(client, m.connect_timeout_s)
        except (aiomqtt.MqttError, OSError, ssl.SSLError) as exc:
            self.protocols.failed(self.broker, v5, exc)
            raise _Ended(describe(exc, transport, m.keepalive_s)) from None
        self.protocols.connected(self.broker, probing)
        try:
            async with asyncio.TaskGroup() as tg:
                # Consuming first: a resumed session's queued messages come before the SUBACK,
                # and a broker may hold the SUBACK until they are acknowledged (amqtt does).
                tg.create_task(self._consume(client))
                tg.create_task(self._until_ended())
                tg.create_task(disconnected(client))
                await client.subscribe(self.topic, qos=1, timeout=m.connect_timeout_s)
                self._since = time.monotonic()
                _log.info("event=downlink_listener_connected broker=%s topic=%s", self.name, self.topic)
        except* (aiomqtt.MqttError, OSError, _Ended) as eg:
            first = eg.exceptions[0]
            raise _Ended(describe(first, transport, m.keepalive_s)) from None
        finally:
            await close(client)

    async def _until_ended(self) -> None:
        await self._end.wait()
        raise _Ended("ended")

    async def _consume(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if self.handle(message.payload, message.retain):
                client._client.ack(message.mid, message.qos)
            else:
                raise _Ended("a downlink could not be stored: not acknowledged, the broker sends it again")

    def handle(self, payload: object, retain: bool) -> bool:
        """Store one message; False when storing failed (no PUBACK). Nothing here raises."""
        if retain:
            self.metrics.downlinks.inc("retained")
            self._faults.log("retained", "event=downlink_retained_ignored broker=%s topic=%s "
                             "(clear it: publish an empty retained message)", self.name, self.topic)
            return True
        try:
            d = self.downlinks.parse(payload)
            self.downlinks.queue(d)  # ValueError: the ack would not fit
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            self.metrics.downlinks.inc("invalid")
            self._faults.log("invalid", "event=downlink_invalid broker=%s error=%s", self.name, exc)
            return True
        except Exception as exc:  # storing it failed (sqlite), or a bug: the broker sends it again
            self.metrics.downlinks.inc("failed")
            self._faults.log(f"failed/{type(exc).__name__}", "event=downlink_not_stored broker=%s error=%r",
                             self.name, exc)
            return False
        self.metrics.downlinks.inc("queued")
        _log.info("event=downlink_queued node=%08x commands=%s id=%s broker=%s",
                  d.node_id, sorted(d.commands), d.ident, self.name)
        return True
