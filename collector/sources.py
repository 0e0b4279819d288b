"""Where messages come from: a JetStream durable pull consumer (the city) or an MQTT session
(one site). Both hand out ``Delivery``s and take them back acknowledged, "in progress" or
dead-lettered; acknowledging is the last thing done with a message, after its rows committed.

JetStream: the stream (created if missing, ``num_replicas`` as configured) captures the
gateways' ``urbansense.v1.*.*.{up,status,event}`` subjects, which are the MQTT topics the
cluster's MQTT listener receives, with dots; it keeps every message ``max_age_s`` (limits
retention: a week's backlog survives a database outage, and a new consumer can replay). One durable pull consumer, explicit acks,
``max_deliver`` unlimited (a message is given up only by dead-lettering it, never by a count
running out while the database is down); every collector that names it competes for its
messages. A message not acknowledged within ``ack_wait_s`` goes to another fetch, so a
SIGKILLed collector's batch is redelivered; ``in_progress`` pushes that deadline back while a
collector keeps retrying a batch its database refused for the moment.

MQTT: QoS 1, a persistent session (``clean_session`` false, the collector's id as client id),
paho's manual acknowledgement: the PUBACK leaves only when ``ack`` is called, so the broker
redelivers whatever was not committed when the collector died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from collector.config import DEAD_LETTER_PREFIX, SUBJECT_PREFIX, SourceConfig

_log = logging.getLogger("collector.source")
LEAVES = ("up", "status", "event")


@dataclass(slots=True)
class Delivery:
    topic: str
    data: bytes
    handle: Any  # the source's own: a nats Msg, or (mid, qos) for MQTT


class Source(Protocol):
    async def start(self) -> None: ...
    async def fetch(self, max_messages: int, timeout_s: float) -> list[Delivery]: ...
    async def ack(self, deliveries: list[Delivery]) -> None: ...
    async def in_progress(self, deliveries: list[Delivery]) -> None: ...
    async def dead_letter(self, delivery: Delivery, reason: str) -> None: ...
    async def close(self) -> None: ...
    def info(self) -> dict[str, Any]: ...


class JetStreamSource:
    def __init__(self, cfg: SourceConfig, name: str) -> None:
        self.cfg = cfg
        self.name = name
        self._nc: Any = None
        self._js: Any = None
        self._sub: Any = None
        self.connected_url: str | None = None

    async def start(self) -> None:
        import nats
        import nats.errors
        from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

        async def on_disconnect() -> None:
            _log.warning("event=nats_disconnected")

        async def on_reconnect() -> None:
            self.connected_url = str(self._nc.connected_url.netloc) if self._nc.connected_url else None
            _log.warning("event=nats_reconnected server=%s", self.connected_url)

        self._nc = await nats.connect(
            servers=self.cfg.servers, name=self.name, max_reconnect_attempts=-1,
            reconnect_time_wait=0.2, connect_timeout=2, allow_reconnect=True,
            disconnected_cb=on_disconnect, reconnected_cb=on_reconnect,
        )
        self.connected_url = str(self._nc.connected_url.netloc) if self._nc.connected_url else None
        self._js = self._nc.jetstream(timeout=10)
        subjects = [f"{SUBJECT_PREFIX}.*.*.{leaf}" for leaf in LEAVES]
        await self._ensure_stream(StreamConfig(name=self.cfg.stream, subjects=subjects,
                                               num_replicas=self.cfg.replicas,
                                               max_age=self.cfg.max_age_s))
        await self._ensure_stream(StreamConfig(name=f"{self.cfg.stream}_DEADLETTER",
                                               subjects=[f"{DEAD_LETTER_PREFIX}.>"],
                                               num_replicas=self.cfg.replicas,
                                               max_age=self.cfg.max_age_s))
        consumer = ConsumerConfig(
            durable_name=self.cfg.durable, ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.cfg.ack_wait_s, max_deliver=-1, max_ack_pending=-1,
        )
        for attempt in range(50):  # the consumer's group may be electing; a loaded cluster is slow
            try:
                self._sub = await self._js.pull_subscribe(
                    "", durable=self.cfg.durable, stream=self.cfg.stream, config=consumer
                )
                break
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                if attempt == 49:
                    raise
                _log.info("event=consumer_create_retry attempt=%d", attempt + 1)
                await asyncio.sleep(0.2)

    async def _ensure_stream(self, config: Any) -> None:
        from nats.js.errors import BadRequestError

        for attempt in range(50):  # the meta leader may be electing after a node loss
            try:
                await self._js.add_stream(config)
                return
            except BadRequestError as exc:
                if "already in use" in str(exc) or exc.err_code == 10058:
                    return  # exists with another configuration: keep the operator's
                raise
            except Exception:
                if attempt == 49:
                    raise
                await asyncio.sleep(0.2)

    async def fetch(self, max_messages: int, timeout_s: float) -> list[Delivery]:
        import nats.errors

        try:
            msgs = await self._sub.fetch(max_messages, timeout=timeout_s)
        except (nats.errors.TimeoutError, TimeoutError):
            return []
        except nats.errors.Error as exc:  # reconnecting, no responders during a leader change
            _log.info("event=fetch_failed error=%r", exc)
            await asyncio.sleep(0.2)
            return []
        return [Delivery(m.subject, m.data, m) for m in msgs]

    async def ack(self, deliveries: list[Delivery]) -> None:
        for d in deliveries:
            # Fire-and-forget: a lost ack means a redelivery, which the store's keys absorb.
            with contextlib.suppress(Exception):
                await d.handle.ack()
        with contextlib.suppress(Exception):
            await self._nc.flush(timeout=2)  # the acks leave now, not at the next write

    async def in_progress(self, deliveries: list[Delivery]) -> None:
        for d in deliveries:
            with contextlib.suppress(Exception):
                await d.handle.in_progress()

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        subject = f"{DEAD_LETTER_PREFIX}.{delivery.topic}"
        await self._js.publish(subject, delivery.data,
                               headers={"Urbansense-Reason": reason, "Urbansense-Collector": self.name})
        await delivery.handle.ack()

    async def pending(self) -> int | None:
        try:
            info = await self._sub.consumer_info()
            return int(info.num_pending) + int(info.num_ack_pending)
        except Exception:
            return None

    def info(self) -> dict[str, Any]:
        connected = bool(self._nc is not None and self._nc.is_connected)
        return {"kind": "jetstream", "connected": connected, "server": self.connected_url,
                "stream": self.cfg.stream, "durable": self.cfg.durable}

    async def close(self) -> None:
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()


class MqttSource:
    def __init__(self, cfg: SourceConfig, name: str) -> None:
        self.cfg = cfg
        self.name = name
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue()
        self._client: Any = None
        self.connected = False

    async def start(self) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        loop = asyncio.get_running_loop()
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"urbansense-collector-{self.name}",
                             clean_session=False, protocol=paho.MQTTv311, manual_ack=True)
        client.reconnect_delay_set(1, 5)
        connected = asyncio.Event()

        def on_connect(c: Any, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
            if rc == 0:
                self.connected = True
                c.subscribe([(f"urbansense/v1/+/+/{leaf}", 1) for leaf in LEAVES])

        def on_subscribe(_c: Any, _u: Any, _mid: Any, _codes: Any, _p: Any = None) -> None:
            # Started once the broker holds the subscription (the SUBACK), not at CONNACK.
            loop.call_soon_threadsafe(connected.set)

        def on_disconnect(_c: Any, _u: Any, _f: Any, _rc: Any, _p: Any = None) -> None:
            self.connected = False

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            d = Delivery(msg.topic, bytes(msg.payload), (msg.mid, msg.qos))
            loop.call_soon_threadsafe(self._queue.put_nowait, d)

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_message = on_message
        client.on_subscribe = on_subscribe
        client.connect_async(self.cfg.host, self.cfg.port, keepalive=30)
        client.loop_start()
        self._client = client
        await asyncio.wait_for(connected.wait(), 30)

    async def fetch(self, max_messages: int, timeout_s: float) -> list[Delivery]:
        try:
            first = await asyncio.wait_for(self._queue.get(), timeout_s)
        except TimeoutError:
            return []
        out = [first]
        while len(out) < max_messages and not self._queue.empty():
            out.append(self._queue.get_nowait())
        return out

    async def ack(self, deliveries: list[Delivery]) -> None:
        for d in deliveries:
            mid, qos = d.handle
            if qos:
                self._client.ack(mid, qos)

    async def in_progress(self, deliveries: list[Delivery]) -> None:
        return None  # MQTT has no ack deadline: unacknowledged messages wait for us

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        topic = "urbansense/deadletter/" + delivery.topic.removeprefix("urbansense/")
        info = self._client.publish(topic, delivery.data, qos=1)
        await asyncio.to_thread(info.wait_for_publish, 10)
        await self.ack([delivery])

    async def pending(self) -> int | None:
        return self._queue.qsize()

    def info(self) -> dict[str, Any]:
        return {"kind": "mqtt", "connected": self.connected, "server": f"{self.cfg.host}:{self.cfg.port}"}

    async def close(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()


def make_source(cfg: SourceConfig, name: str) -> JetStreamSource | MqttSource:
    return JetStreamSource(cfg, name) if cfg.kind == "jetstream" else MqttSource(cfg, name)
