"""Downlinks are never lost: published at QoS 1 while the gateway is stopped, on the broker it
is not connected to, or before a crash, they reach the node; retained ones are ignored."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway.app import Gateway
from gateway.config import BrokerAddress
from gateway.registry import NodeSpec, write_registry
from tests.test_gw_crash import GatewayProcess
from tests.test_gw_mqtt311 import Mqtt311Broker
from tests.test_gw_support import KEYS, PtyNode, decode_ack, frame, make_config, wait_for
from urbansense.broker import free_port

DOWN = "urbansense/v1/test-site/gw-1/down"
COMMAND = {"node_id": 4, "commands": {"report_interval_s": 4500}}


# amqtt keeps QoS 1 messages for an absent persistent session only when the client is not
# anonymous (amqtt/broker.py, MQTT 3.1.1 section 3.1.2.4): clients here give a user name.
# amqtt 0.12 also sends those queued messages with RETAIN = 1, which MQTT 3.1.1 section 3.3.1.3
# forbids (1 only for a new subscription); the gateway ignores retained downlinks, so the
# broker here is patched to follow the standard (RabbitMQ and NATS, the 3.1.1-only brokers of
# docs/GATEWAY.md, do).
_AMQTT_USERS = """
import asyncio, sys
from amqtt.broker import Broker

async def _queued(self, session):
    handler = self._get_handler(session)
    while handler and not session.retained_messages.empty():
        m = await session.retained_messages.get()
        await handler.mqtt_publish(m.topic, m.data, m.qos, retain=False)

Broker._publish_session_retained_messages = _queued

async def main() -> None:
    b = Broker({"listeners": {"default": {"type": "tcp", "bind": sys.argv[1]}},
                "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                            {"allow_anonymous": False}}})
    await b.start()
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.fixture
def broker311() -> Iterator[Mqtt311Broker]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", _AMQTT_USERS, f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", f"amqtt did not start: {line!r}"
        yield Mqtt311Broker("127.0.0.1", port)
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


async def _publish(broker: Any, payload: dict[str, Any], retain: bool = False, v311: bool = False,
                   topic: str = DOWN) -> None:
    proto = aiomqtt.ProtocolVersion.V311 if v311 else aiomqtt.ProtocolVersion.V5
    async with aiomqtt.Client(broker.host, broker.port, protocol=proto, username="operator") as c:
        await c.publish(topic, json.dumps(payload), qos=1, retain=retain)


async def _ack_for(gw: Gateway, node: PtyNode, fcnt: int) -> tuple[int, int, dict[int, Any] | None]:
    await asyncio.wait_for(gw.serial_ports[0].opened.wait(), 5)
    n = len(node.acks)
    node.send(frame(4, fcnt))
    await wait_for(lambda: len(node.acks) > n, what=f"ack of fcnt {fcnt}")
    return decode_ack(4, node.acks[-1])


async def _published_while_stopped(tmp_path: Path, broker: Any, v311: bool) -> None:
    node = PtyNode()
    cfg = make_config(tmp_path, broker, serial__ports=[node.path],
                      mqtt__protocol="3.1.1" if v311 else "5", mqtt__username="gw-1")
    gw = Gateway(cfg)
    task = asyncio.create_task(gw.run())
    try:
        await asyncio.wait_for(gw.started.wait(), 10)
        await wait_for(lambda: gw.listeners[0].connected_for_s() is not None, what="listener session")
        await gw.stop()
        await task
        await _publish(broker, COMMAND, v311=v311)  # nobody is listening now
        gw = Gateway(cfg)
        task = asyncio.create_task(gw.run())
        await asyncio.wait_for(gw.started.wait(), 10)
        await wait_for(lambda: gw.metrics.downlinks.get("queued") == 1, what="queued from the session")
        assert (await _ack_for(gw, node, 1))[2] == {1: 4500}
    finally:
        await gw.stop()
        await task
        node.close()


async def test_a_downlink_published_while_the_gateway_is_stopped_reaches_the_node_mqtt5(
    tmp_path: Path, mqtt_broker: Any
) -> None:
    """Before: a clean session, so the broker kept nothing while the gateway was away."""
    await _published_while_stopped(tmp_path, mqtt_broker, v311=False)


async def test_a_downlink_published_while_the_gateway_is_stopped_reaches_the_node_mqtt311(
    tmp_path: Path, broker311: Mqtt311Broker
) -> None:
    """The same on a 3.1.1-only broker (amqtt): clean_session = false."""
    await _published_while_stopped(tmp_path, broker311, v311=True)


async def test_a_downlink_published_to_the_broker_the_gateway_is_not_on_reaches_the_node(
    tmp_path: Path, mqtt_broker_factory: Any, running: Any
) -> None:
    """Before: the gateway listened for downlinks only on the broker it was connected to."""
    first, second = mqtt_broker_factory(), mqtt_broker_factory()
    node = PtyNode()
    cfg = make_config(tmp_path, first, serial__ports=[node.path])
    cfg.mqtt.brokers.append(BrokerAddress(second.host, second.port))
    gw = await running(cfg)
    assert gw.publisher is not None
    await asyncio.wait_for(gw.publisher.connected.wait(), 10)
    assert gw.publisher.broker == f"{first.host}:{first.port}"
    await wait_for(lambda: all(lis.connected_for_s() is not None for lis in gw.listeners), what="listeners")
    await _publish(second, COMMAND)
    await wait_for(lambda: gw.metrics.downlinks.get("queued") == 1, what="queued from the second broker")
    assert (await _ack_for(gw, node, 1))[2] == {1: 4500}
    node.close()


async def test_a_retained_downlink_is_ignored_and_counted(
    tmp_path: Path, mqtt_broker: Any, running: Any
) -> None:
    """Before: a retained command was applied again at every connect, each time with a new DCnt."""
    await _publish(mqtt_broker, COMMAND, retain=True)
    node = PtyNode()
    gw = await running(make_config(tmp_path, mqtt_broker, serial__ports=[node.path]))
    await wait_for(lambda: gw.metrics.downlinks.get("retained") == 1, what="retained counted")
    assert (await _ack_for(gw, node, 1))[2] is None
    assert gw.metrics.downlinks.get("queued") == 0
    node.close()


async def test_a_downlink_whose_ack_was_lost_is_sent_again_after_a_gateway_crash(
    tmp_path: Path, mqtt_broker: Any
) -> None:
    """Before: the commands left the outbox with the first ack; the ack was lost, the gateway
    was killed (its cache of acks with it), and the re-ack and later acks carried nothing."""
    write_registry(tmp_path / "nodes.jsonl", [NodeSpec(n, "water", KEYS[n]) for n in (4,)])
    link = tmp_path / "by-id-node"
    node = PtyNode(link)
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f"""
[gateway]
site = "test-site"
id = "gw-1"
registry = "nodes.jsonl"
data_dir = "data"
[batch]
max_age_s = 0.05
ack_max_delay_ms = 5
[mqtt]
brokers = ["{mqtt_broker.host}:{mqtt_broker.port}"]
backoff_min_s = 0.05
backoff_max_s = 0.3
[serial]
ports = ["{link}"]
retry_min_s = 0.05
retry_max_s = 0.2
[http]
enabled = false
""")
    gw = GatewayProcess(cfg)
    try:
        await gw.start()
        await wait_for(lambda: any("event=downlink_listener_connected" in ln for ln in gw.lines),
                       what="listener")
        await _publish(mqtt_broker, COMMAND)
        await wait_for(lambda: any("event=downlink_queued" in ln for ln in gw.lines), what="queued")
        node.send(frame(4, 1))
        await wait_for(lambda: len(node.acks) == 1, what="first ack")
        assert decode_ack(4, node.acks[0])[2] == {1: 4500}  # ... and the node never read it
        assert await gw.kill() == -signal.SIGKILL
        await gw.start()
        node.send(frame(4, 1))  # the node retransmits the frame it saw no ack for
        await wait_for(lambda: len(node.acks) == 2, what="re-ack after the crash")
        assert decode_ack(4, node.acks[1])[2] == {1: 4500}
        node.send(frame(4, 2))
        await wait_for(lambda: len(node.acks) == 3, what="next ack")
        assert decode_ack(4, node.acks[2])[2] == {1: 4500}
        assert await gw.kill(signal.SIGTERM) == 0
    finally:
        gw.ensure_dead()
        node.close()
