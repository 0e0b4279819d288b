"""Gateway end to end against real parts: mosquitto, ptys, bleak with the simulated air."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway.config import BrokerAddress
from gateway.transports.datagram import send_advert
from tests.test_gw_support import (
    KEYS,
    PtyNode,
    Subscriber,
    decode_ack,
    frame,
    make_config,
    wait_for,
)


@pytest.fixture
async def sub(mqtt_broker: Any) -> AsyncIterator[Subscriber]:
    s = Subscriber(mqtt_broker).start()
    await asyncio.wait_for(s.ready.wait(), 10)
    yield s
    await s.stop()


async def test_serial_frame_reaches_broker_and_node_gets_ack(
    tmp_path: Path, mqtt_broker: Any, sub: Subscriber, running: Any
) -> None:
    node = PtyNode()
    cfg = make_config(tmp_path, mqtt_broker, serial__ports=[node.path])
    gw = await running(cfg)
    await asyncio.wait_for(gw.serial_ports[0].opened.wait(), 5)
    node.send(frame(1, 7, {3: 12345, 5: 3600}))
    await wait_for(lambda: sub.frames, what="frame at the broker")
    node_id, fcnt, values = sub.frames[0]
    assert (node_id, fcnt) == (1, 7)
    assert values["vol"] == 12.345
    await wait_for(lambda: node.acks, what="ack on the pty")
    dcnt, acked, commands = decode_ack(1, node.acks[0])
    assert (acked, commands) == (7, None) and dcnt >= 1
    up = [m for m in sub.messages if str(m.topic) == "urbansense/v1/test-site/gw-1/up"]
    assert up[0].properties is not None and up[0].properties.ContentType == "application/senml+cbor"
    node.close()


async def test_ble_advert_via_bleak_reaches_broker(
    tmp_path: Path, mqtt_broker: Any, sub: Subscriber, running: Any
) -> None:
    air = str(tmp_path / "air.sock")
    cfg = make_config(tmp_path, mqtt_broker, ble__enabled=True, ble__backend="datagram",
                      ble__datagram_socket=air)
    gw = await running(cfg)
    assert gw.ble is not None
    await asyncio.wait_for(gw.ble.started.wait(), 5)
    f = frame(2, 1, {0: True, 11: 1})
    send_advert(air, "AA:BB:CC:00:00:02", -80, {0x0059: b"other company"})
    for rssi in (-70, -60, -75):  # one frame heard three times: forwarded once
        send_advert(air, "AA:BB:CC:00:00:02", rssi, {0xFFFF: f})
    await wait_for(lambda: gw.metrics.duplicates.total() == 2, what="two duplicates")
    await wait_for(lambda: sub.frames, what="BLE frame at the broker")
    await asyncio.sleep(0)  # let any (wrong) second publish surface
    assert gw.metrics.frames_in.get("ble") == 3
    assert sub.keys() == [(2, 1)]
    assert sub.frames[0][2]["occ"] is True
    assert sub.frames[0][2]["rssi"] in (-100, -90, -105)  # best RSSI if merged before commit


async def test_serial_retransmission_is_reacked_and_forwarded_once(
    tmp_path: Path, mqtt_broker: Any, sub: Subscriber, running: Any
) -> None:
    node = PtyNode()
    gw = await running(make_config(tmp_path, mqtt_broker, serial__ports=[node.path]))
    await asyncio.wait_for(gw.serial_ports[0].opened.wait(), 5)
    f = frame(3, 10)
    node.send(f)
    await wait_for(lambda: len(node.acks) == 1, what="first ack")
    node.send(f)  # the ack was "lost": the node sends the same frame again
    await wait_for(lambda: len(node.acks) == 2, what="second ack")
    assert node.acks[0] == node.acks[1]
    node.send(frame(3, 11))
    await wait_for(lambda: len(sub.frames) == 2, what="two frames")
    assert sub.keys() == [(3, 10), (3, 11)]
    assert gw.metrics.duplicates.total() == 1
    node.close()


async def test_a_reack_carries_the_first_acks_dcnt_also_after_a_restart(
    tmp_path: Path, mqtt_broker: Any, running: Any
) -> None:
    """PROTOCOL.md section 5: a re-ack does not advance DCnt, cached or rebuilt; a new ack does."""
    node = PtyNode()
    gw = await running(make_config(tmp_path, mqtt_broker, serial__ports=[node.path]))
    await asyncio.wait_for(gw.serial_ports[0].opened.wait(), 5)
    node.send(frame(3, 10))
    await wait_for(lambda: len(node.acks) == 1, what="first ack")
    node.send(frame(3, 10))
    await wait_for(lambda: len(node.acks) == 2, what="cached re-ack")
    await gw.stop()  # the cache of acks goes with it; DCnt is on disk
    gw = await running(make_config(tmp_path, mqtt_broker, serial__ports=[node.path]))
    await asyncio.wait_for(gw.serial_ports[0].opened.wait(), 5)
    node.send(frame(3, 10))
    await wait_for(lambda: len(node.acks) == 3, what="re-ack rebuilt after the restart")
    node.send(frame(3, 11))
    await wait_for(lambda: len(node.acks) == 4, what="a new ack")
    (d1, a1, _), (d2, a2, _), (d3, a3, _), (d4, a4, _) = (decode_ack(3, a) for a in node.acks)
    assert (a1, a2, a3, a4) == (10, 10, 10, 11)
    assert d1 == d2 == d3 and d4 == d1 + 1
    node.close()


async def test_downlink_rides_with_every_ack_until_the_node_reports_its_dcnt(
    tmp_path: Path, mqtt_broker: Any, sub: Subscriber, running: Any
) -> None:
    """The commands ride with each ack until a frame reports (quantity 14) the DCnt of an ack
    that carried them; then they stop and ``down/ack`` tells the sender, with its id."""
    node = PtyNode()
    gw = await running(make_config(tmp_path, mqtt_broker, serial__ports=[node.path]))
    assert gw.publisher is not None
    await asyncio.wait_for(gw.publisher.connected.wait(), 5)
    # The downlink listener is its own session: until its SUBACK the broker keeps nothing for it.
    await wait_for(lambda: gw.listeners[0].connected_for_s() is not None, what="listener subscribed")
    async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port) as c:
        await c.publish("urbansense/v1/test-site/gw-1/down",
                        json.dumps({"node_id": 4, "commands": {"report_interval_s": 900}, "id": "op-7"}),
                        qos=1)
        await c.publish("urbansense/v1/test-site/gw-1/down", b"\xff not json", qos=1)
    await wait_for(lambda: gw.metrics.downlinks.get("queued") == 1, what="downlink queued")
    await wait_for(lambda: gw.metrics.downlinks.get("invalid") == 1, what="bad downlink counted")
    await asyncio.wait_for(gw.serial_ports[0].opened.wait(), 5)
    node.send(frame(4, 1))
    await wait_for(lambda: node.acks, what="ack")
    assert decode_ack(4, node.acks[0])[2] == {1: 900}
    dcnt1 = decode_ack(4, node.acks[0])[0]
    node.send(frame(4, 2))  # built before the node read ack 1: reports no dcnt
    await wait_for(lambda: len(node.acks) == 2, what="second ack")
    dcnt2, _, cmds2 = decode_ack(4, node.acks[1])
    assert cmds2 == {1: 900} and dcnt2 > dcnt1
    node.send(frame(4, 3, {5: 3600, 14: dcnt1}))  # the node accepted ack 1
    await wait_for(lambda: len(node.acks) == 3, what="third ack")
    assert decode_ack(4, node.acks[2])[2] is None
    await wait_for(lambda: any(str(m.topic).endswith("/down/ack") for m in sub.messages), what="down/ack")
    ack = json.loads(next(m.payload for m in sub.messages if str(m.topic).endswith("/down/ack")))  # type: ignore[arg-type]
    assert ack["node_id"] == 4 and ack["commands"] == {"report_interval_s": 900} and ack["ids"] == ["op-7"]
    assert ack["dcnt"] == dcnt1
    assert gw.outbox is not None and gw.outbox.load_downlinks() == {}
    node.close()


async def test_serial_port_that_disappears_is_picked_up_again(
    tmp_path: Path, mqtt_broker: Any, sub: Subscriber, running: Any
) -> None:
    link = tmp_path / "usb-urbansense-node"  # stands in for /dev/serial/by-id/...
    node = PtyNode(link)
    gw = await running(make_config(tmp_path, mqtt_broker, serial__ports=[str(link)]))
    port = gw.serial_ports[0]
    await asyncio.wait_for(port.opened.wait(), 5)
    node.send(frame(5, 1))
    await wait_for(lambda: node.acks, what="ack before the unplug")
    node.close()  # unplugged
    link.unlink()
    await wait_for(lambda: not port.is_open, what="port noticed gone")
    node2 = PtyNode(link)  # replugged, under a new /dev/pts number
    await asyncio.wait_for(port.opened.wait(), 5)
    node2.send(frame(5, 2))
    await wait_for(lambda: node2.acks, what="ack after the replug")
    await wait_for(lambda: len(sub.frames) == 2, what="both frames")
    assert port.opens == 2
    node2.close()


async def test_broker_restart_loses_nothing_in_order(
    tmp_path: Path, mqtt_broker_factory: Any, running: Any
) -> None:
    mqtt_broker = mqtt_broker_factory(persistence=True)
    sub = Subscriber(mqtt_broker, persistent=True).start()
    await asyncio.wait_for(sub.ready.wait(), 10)
    gw = await running(make_config(tmp_path, mqtt_broker, nodes=range(1, 4)))
    assert gw.publisher is not None
    fcnt = {1: 0, 2: 0, 3: 0}

    def send(n: int) -> None:
        for _ in range(n):
            for node in fcnt:
                fcnt[node] += 1
                assert gw.feed(frame(node, fcnt[node]), "test")

    send(20)
    await wait_for(lambda: len(sub.frames) >= 60, what="first 60")
    await asyncio.to_thread(mqtt_broker.stop)
    await wait_for(lambda: not gw.publisher.connected.is_set(), what="publisher noticed")
    send(30)  # accepted into the outbox while the broker is down
    await wait_for(lambda: gw.metrics.readings_committed.total() == 150, what="committed")
    await asyncio.to_thread(mqtt_broker.start)
    send(20)
    await wait_for(lambda: len(set(sub.keys())) == 210, timeout_s=20, what="all 210 delivered")
    for node in fcnt:
        seen = [f for n, f in sub.keys() if n == node]
        first_seen = list(dict.fromkeys(seen))  # subscriber-side dedup on (node, fcnt)
        assert first_seen == list(range(1, 71)), f"node {node} out of order or missing"
    await wait_for(lambda: gw.metrics.outbox_depth.get() == 0, what="outbox drained")
    await sub.stop()


async def test_birth_and_will(tmp_path: Path, mqtt_broker: Any, sub: Subscriber, running: Any) -> None:
    gw = await running(make_config(tmp_path, mqtt_broker))
    status_topic = "urbansense/v1/test-site/gw-1/status"
    await wait_for(lambda: any(str(m.topic) == status_topic for m in sub.messages), what="birth")
    births = [json.loads(m.payload) for m in sub.messages if str(m.topic) == status_topic]  # type: ignore[arg-type]
    assert births[-1]["state"] == "online"
    await gw.stop()
    await wait_for(
        lambda: json.loads(sub.messages[-1].payload)["state"] == "offline"  # type: ignore[arg-type]
        if str(sub.messages[-1].topic) == status_topic else False,
        what="offline status",
    )


async def test_events_alarm_and_low_battery(
    tmp_path: Path, mqtt_broker: Any, sub: Subscriber, running: Any
) -> None:
    gw = await running(make_config(tmp_path, mqtt_broker))
    gw.feed(frame(1, 1, {3: 100, 4: 1 | 8}, ftype=2), "test")  # leak + tamper
    gw.feed(frame(1, 2, {5: 3000, 10: 1}, ftype=1), "test")  # low battery
    event_topic = "urbansense/v1/test-site/gw-1/event"

    def events() -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in sub.messages if str(m.topic) == event_topic]  # type: ignore[arg-type]

    await wait_for(lambda: len(events()) == 3, what="three events")
    kinds = sorted((e["event"], e.get("alarm", "")) for e in events())
    assert kinds == [("alarm", "leak"), ("alarm", "tamper"), ("low_battery", "")]


async def test_tls_broker(tmp_path: Path, mqtt_broker_tls: Any, running: Any) -> None:
    cfg = make_config(tmp_path, mqtt_broker_tls, mqtt__tls=True, mqtt__ca_file=mqtt_broker_tls.ca_path)
    gw = await running(cfg)
    assert gw.publisher is not None
    await asyncio.wait_for(gw.publisher.connected.wait(), 10)
    gw.feed(frame(1, 1), "test")
    await wait_for(lambda: gw.metrics.published_readings.total() == 1, what="published over TLS")


async def test_password_broker(tmp_path: Path, mqtt_broker_auth: Any, running: Any) -> None:
    pw = tmp_path / "mqtt.password"
    pw.write_text(mqtt_broker_auth.password + "\n")
    pw.chmod(0o600)
    cfg = make_config(tmp_path, mqtt_broker_auth, mqtt__username=mqtt_broker_auth.username,
                      mqtt__password_file=pw)
    gw = await running(cfg)
    assert gw.publisher is not None
    await asyncio.wait_for(gw.publisher.connected.wait(), 10)
    gw.feed(frame(1, 1), "test")
    await wait_for(lambda: gw.metrics.published_readings.total() == 1, what="published with auth")


async def test_wrong_password_is_retried_not_fatal(
    tmp_path: Path, mqtt_broker_auth: Any, running: Any
) -> None:
    pw = tmp_path / "mqtt.password"
    pw.write_text("wrong\n")
    pw.chmod(0o600)
    cfg = make_config(tmp_path, mqtt_broker_auth, mqtt__username="urbansense", mqtt__password_file=pw)
    gw = await running(cfg)
    gw.feed(frame(1, 1), "test")
    await wait_for(lambda: gw.metrics.broker_errors.total() >= 2, what="retries")
    await wait_for(lambda: gw.metrics.readings_committed.total() == 1, what="still accepting")


async def test_keys_never_logged(
    tmp_path: Path, mqtt_broker: Any, running: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gw = await running(make_config(tmp_path, mqtt_broker))
    gw.feed(frame(1, 1), "test")
    gw.feed(frame(1, 1, key=bytes(16)), "test")  # bad MIC
    await wait_for(lambda: gw.metrics.rejections.get("bad_mic") == 1, what="bad mic")
    text = caplog.text + repr(gw.registry.nodes()) + repr(gw.registry)
    for key in KEYS.values():
        assert key.hex() not in text and repr(key) not in text
    assert (tmp_path / "nodes.jsonl").stat().st_mode & 0o777 == 0o600


async def test_ble_watchdog_escalates_and_recovers(
    tmp_path: Path, mqtt_broker: Any, running: Any
) -> None:
    air = str(tmp_path / "air.sock")
    cfg = make_config(tmp_path, mqtt_broker, ble__enabled=True, ble__backend="datagram",
                      ble__datagram_socket=air, ble__watchdog_s=0.1)
    gw = await running(cfg)
    assert gw.ble is not None
    rec = gw.metrics.ble_recoveries
    await wait_for(lambda: rec.get("restart_scan") >= 1 and rec.get("recreate_scanner") >= 1,
                   what="escalation")
    assert gw.metrics.ble_scanner_healthy.get() == 0
    await wait_for(lambda: Path(air).exists() and gw.ble is not None and gw.ble.step < 2,
                   what="scanner listening again")
    send_advert(air, "AA:BB:CC:00:00:01", -50, {0xFFFF: frame(1, 1)})
    await wait_for(lambda: gw.metrics.frames_accepted.get("ble") == 1, what="advert after recovery")


async def test_fails_over_to_the_next_broker_and_loses_nothing(
    tmp_path: Path, mqtt_broker_factory: Any, running: Any
) -> None:
    first, second = mqtt_broker_factory(), mqtt_broker_factory()
    subs = [Subscriber(b).start() for b in (first, second)]
    for s in subs:
        await asyncio.wait_for(s.ready.wait(), 10)
    cfg = make_config(tmp_path, first, nodes=range(1, 3))
    cfg.mqtt.brokers.append(BrokerAddress(second.host, second.port))
    gw = await running(cfg)
    assert gw.publisher is not None
    for fcnt in range(1, 11):
        gw.feed(frame(1, fcnt), "test")
    await wait_for(lambda: len(subs[0].frames) == 10, what="first ten via the first broker")
    first.stop()
    for fcnt in range(1, 11):
        gw.feed(frame(2, fcnt), "test")
    await wait_for(lambda: gw.publisher.broker == f"{second.host}:{second.port}", timeout_s=20,
                   what="failover to the second broker")
    await wait_for(lambda: {k for k in subs[1].keys() if k[0] == 2} == {(2, f) for f in range(1, 11)},
                   what="node 2's frames via the second broker")
    delivered = set(subs[0].keys()) | set(subs[1].keys())
    assert delivered == {(n, f) for n in (1, 2) for f in range(1, 11)}
    for s in subs:
        await s.stop()
