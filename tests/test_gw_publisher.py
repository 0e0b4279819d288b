"""The MQTT publisher (gateway/publisher.py) at its own API: one Publisher over a real outbox,
against mosquitto where a broker works and against tests/support/mqttfake.py (which records
the wire and fails on cue) where a broker fails.

Promises: uplinks at QoS 1 (with the SenML content type over MQTT 5), deleted only after
their PUBACK; a retained birth, a retained offline will, offline said on the way out; a broker
that withholds a PUBACK, never answers, stops answering or resets ends the session within its
bound and the cause is named; the next broker in the list, jittered exponential backoff reset
by a working session, failback to a preferred broker without a wait; MQTT 3.1.1 after an
unanswered MQTT 5 CONNECT, remembered; events and downlink acks at QoS 1, counted; the
status the gateway serves (broker, protocol, since, last error) and the broker gauges.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.subscribeoptions import SubscribeOptions

import gateway.publisher as publisher_mod
from gateway.config import BrokerAddress, GatewayConfig
from gateway.metrics import Metrics
from gateway.mqttclient import Credentials, Protocols
from gateway.outbox import Outbox
from gateway.publisher import Publisher
from tests.support.mqttfake import Connect, FakeBroker, Publish
from urbansense.broker import free_port
from urbansense.wire.senml import CONTENT_TYPE

PREFIX = "urbansense/v1/s1/gw-9"
OFFLINE = {"state": "offline", "gateway": "gw-9"}
_BUG = re.compile(r"^[A-Z]\w*(Error|Exception): ")  # an unexpected exception (run's own branch)
_RESET = "failed to receive on socket: [Errno 104] Connection reset by peer"  # paho's log line


class _Gw:
    """A Publisher over its own outbox, as gateway/app.py wires it."""

    def __init__(self, tmp: Path, brokers: list[Any], protocol: str = "3.1.1",
                 preferred_up_s: Callable[[int], float | None] = lambda i: None, **mqtt: Any) -> None:
        cfg = GatewayConfig(site="s1", gateway_id="gw-9", registry=tmp / "nodes.jsonl", data_dir=tmp)
        cfg.mqtt.brokers = [BrokerAddress(b.host, b.port) for b in brokers]
        cfg.mqtt.protocol = protocol
        for k, v in {"inflight_max": 2, "backoff_min_s": 0.01, "backoff_max_s": 0.05, "connect_timeout_s": 3.0,
                     "publish_timeout_s": 10.0, "failback_s": 5.0, **mqtt}.items():
            setattr(cfg.mqtt, k, v)
        self.cfg = cfg
        self.metrics = Metrics()
        self.outbox = Outbox(tmp / f"outbox-{id(self)}.db", 1 << 20, self.metrics)
        self.credentials = Credentials(cfg.mqtt)
        self.pub = Publisher(cfg, self.outbox, self.metrics, Protocols(protocol), self.credentials, preferred_up_s)
        self.task: asyncio.Task[None] | None = None
        self.bugs_expected = False

    def start(self) -> _Gw:
        self.task = asyncio.create_task(self.pub.run())
        return self

    async def until(self, pred: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
        """Wait for ``pred``; fail at once when the publisher has stopped or a session failed
        on a bug (``last_error`` "TypeError: ..."): a broken publisher is no reason to wait."""
        deadline = time.monotonic() + timeout_s
        while not pred():
            if self.task is not None and self.task.done():
                ending = "cancelled" if self.task.cancelled() else repr(self.task.exception())
                raise AssertionError(f"the publisher stopped waiting for {what}: {ending}")
            if not self.bugs_expected and _BUG.match(self.pub.last_error):
                raise AssertionError(f"a session failed waiting for {what}: {self.pub.last_error}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.005)

    async def connected(self) -> None:
        await self.until(self.pub.connected.is_set, "a session")

    def commit(self, n: int) -> list[bytes]:
        payloads = [b"pack-%d" % i for i in range(n)]
        for p in payloads:
            self.outbox.commit_batch(p, frames=1, priority=0)
        return payloads

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.outbox.close()


@pytest.fixture
async def gws() -> AsyncIterator[Callable[..., _Gw]]:
    made: list[_Gw] = []

    def make(*args: Any, **kw: Any) -> _Gw:
        made.append(_Gw(*args, **kw))
        return made[-1]

    yield make
    for g in made:
        await g.stop()


@pytest.fixture
async def fakes() -> AsyncIterator[Callable[..., Awaitable[FakeBroker]]]:
    made: list[FakeBroker] = []

    async def make(port: int = 0) -> FakeBroker:
        made.append(await FakeBroker(port).start())
        return made[-1]

    yield make
    for b in made:
        await b.stop()


class _Draws:
    """The backoff's random.uniform: records each (low, high) and waits ``wait_s``."""

    def __init__(self, wait_s: float = 0.0) -> None:
        self.wait_s = wait_s
        self.calls: list[tuple[float, float]] = []

    def uniform(self, low: float, high: float) -> float:
        self.calls.append((low, high))
        return self.wait_s


@pytest.fixture
def draws(monkeypatch: pytest.MonkeyPatch) -> _Draws:
    d = _Draws()
    monkeypatch.setattr(publisher_mod, "random", SimpleNamespace(uniform=d.uniform))
    return d


def _status(fake: FakeBroker) -> list[dict[str, Any]]:
    return [p.json() for p in fake.topics("/status")]


# -- a working broker ------------------------------------------------------------------------


async def test_uplinks_go_at_qos_1_with_the_senml_content_type_and_the_birth_is_retained(
    tmp_path: Path, mqtt_broker: Any, gws: Callable[..., _Gw]
) -> None:
    g = gws(tmp_path, [mqtt_broker], protocol="auto")
    p = g.pub
    # What the status page shows before any session.
    assert (p.broker, p.protocol, p.last_error, p.connected_since_s, p.broker_index) == ("", "", "", 0.0, 0)
    await p.announce_offline()  # no session: nothing to say, no error
    seen: list[aiomqtt.Message] = []
    async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port, protocol=aiomqtt.ProtocolVersion.V5) as c:
        await c.subscribe(f"{PREFIX}/#", options=SubscribeOptions(qos=2, retainAsPublished=True))

        async def collect() -> None:
            async for m in c.messages:
                seen.append(m)

        collector = asyncio.create_task(collect())
        payloads = g.commit(3)
        t0 = time.time()
        g.start()
        await g.connected()
        t1 = time.time()
        await g.until(lambda: g.outbox.depth == 0 and len(seen) == 4, what="birth and three uplinks")
        up = [m for m in seen if str(m.topic) == f"{PREFIX}/up"]
        assert [m.payload for m in up] == payloads
        assert {(m.qos, m.retain, m.properties.ContentType) for m in up} == {(1, False, CONTENT_TYPE)}  # type: ignore[union-attr]
        birth = seen[0]
        assert (str(birth.topic), birth.qos, birth.retain) == (f"{PREFIX}/status", 1, True)
        address = f"{mqtt_broker.host}:{mqtt_broker.port}"
        body = json.loads(birth.payload)  # type: ignore[arg-type]
        assert t0 <= body.pop("time_s") <= t1
        assert body == {"state": "online", "gateway": "gw-9", "site": "s1", "broker": address}
        assert (p.broker, p.protocol, p.last_error, p.broker_index) == (address, "5", "", 0)
        assert t0 <= p.connected_since_s <= t1
        m = g.metrics
        assert (m.broker_connected.get(), m.broker_connects.total(), m.broker_errors.total()) == (1, 1, 0)
        assert m.published_batches.total() == 3

        await p.announce_offline()
        await g.until(lambda: len(seen) == 5, what="offline")
        assert (str(seen[4].topic), seen[4].qos, seen[4].retain) == (f"{PREFIX}/status", 1, True)
        assert json.loads(seen[4].payload) == OFFLINE  # type: ignore[arg-type]
        collector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await collector


async def test_connect_names_the_client_the_password_and_a_retained_offline_will(
    tmp_path: Path, fakes: Callable[..., Awaitable[FakeBroker]], gws: Callable[..., _Gw]
) -> None:
    fake = await fakes()
    g = gws(tmp_path, [fake], username="gw")
    g.credentials.password = "s3cret"
    g.start()
    await g.connected()
    (c,) = fake.connects
    assert c == Connect(4, "urbansense-s1-gw-9", "gw", "s3cret", Publish(f"{PREFIX}/status", c.will.payload, 1, True))  # type: ignore[union-attr]
    assert c.will is not None and c.will.json() == OFFLINE
    (birth,) = fake.topics("/status")
    assert (birth.qos, birth.retain, birth.json()["state"]) == (1, True, "online")
    assert g.pub.protocol == "3.1.1"


async def test_events_and_downlink_acks_go_at_qos_1_and_events_are_counted_by_type(
    tmp_path: Path, fakes: Callable[..., Awaitable[FakeBroker]], gws: Callable[..., _Gw]
) -> None:
    fake = await fakes()
    g = gws(tmp_path, [fake])
    g.pub.emit_event({"event": "alarm", "node": 7})  # queued until a session takes them
    t0 = time.time()
    g.pub.emit_applied({"node": 7, "dcnt": 2})
    t1 = time.time()
    g.pub.emit_event({"event": "low_battery", "node": 8})
    g.pub.emit_event({"node": 9})  # no type: counted under ""
    g.start()
    await g.until(lambda: len(fake.publishes) == 5, what="birth, three events, one ack")
    rest = fake.publishes[1:4]
    assert [(p.topic, p.qos, p.retain) for p in rest] == [
        (f"{PREFIX}/event", 1, False), (f"{PREFIX}/down/ack", 1, False), (f"{PREFIX}/event", 1, False)]
    ack = rest[1].json()
    assert t0 <= ack.pop("time_s") <= t1
    assert (rest[0].json(), ack, rest[2].json()) == (
        {"event": "alarm", "node": 7}, {"node": 7, "dcnt": 2}, {"event": "low_battery", "node": 8})
    await g.until(lambda: g.metrics.events.total() == 3, what="events counted")
    assert g.metrics.events.values == {"alarm": 1, "low_battery": 1, "": 1}


def test_events_beyond_the_queue_are_dropped_and_counted(tmp_path: Path) -> None:
    g = _Gw(tmp_path, [])
    for i in range(1000):
        g.pub.emit_event({"event": "alarm", "node": i})
    assert g.metrics.events_dropped.total() == 0
    g.pub.emit_applied({"node": 1, "dcnt": 1})
    g.pub.emit_event({"event": "alarm", "node": 1000})
    assert g.metrics.events_dropped.total() == 2 and g.pub.events.qsize() == 1000
    g.outbox.close()


async def test_no_more_than_inflight_max_uplinks_wait_for_their_puback(
    tmp_path: Path, fakes: Callable[..., Awaitable[FakeBroker]], gws: Callable[..., _Gw]
) -> None:
    fake = await fakes()
    fake.ack = lambda p: not p.topic.endswith("/up")
    g = gws(tmp_path, [fake], inflight_max=24, drain_rate_batches_s=1e6)
    g.commit(30)
    g.start()
    await g.until(lambda: len(fake.topics("/up")) == 24, what="a window of 24 PUBLISHes on the wire")
    assert g.outbox.depth == 30, "deleted without a PUBACK"
    fake.release()
    await g.until(lambda: len(fake.topics("/up")) == 30 and g.outbox.depth == 6, what="the rest")
    fake.release()
    await g.until(lambda: g.outbox.depth == 0, what="all acked")
    assert [p.payload for p in fake.topics("/up")] == [b"pack-%d" % i for i in range(30)]
    assert {(p.qos, p.retain) for p in fake.topics("/up")} == {(1, False)}
    assert g.metrics.broker_connects.total() == 1 and g.pub.last_error == ""


# -- a broker that fails -------------------------------------------------------------------------


async def test_a_withheld_puback_ends_the_session_and_the_batch_is_sent_again(
    tmp_path: Path, fakes: Callable[..., Awaitable[FakeBroker]], gws: Callable[..., _Gw]
) -> None:
    fake = await fakes()
    fake.ack = lambda p: not p.topic.endswith("/up")
    # connect_timeout_s is aiomqtt's default for a publish without its own timeout: far off.
    g = gws(tmp_path, [fake], publish_timeout_s=0.3, connect_timeout_s=60.0)
    (payload,) = g.commit(1)
    g.start()
    await g.until(lambda: g.pub.last_error != "", timeout_s=5, what="the session ended")
    assert g.pub.last_error == "publish_timeout: no PUBACK within publish_timeout_s (0.3 s)"
    assert g.outbox.depth == 1, "a batch left the outbox without its PUBACK"
    fake.ack = lambda p: True
    await g.until(lambda: g.outbox.depth == 0, what="sent again and acked")
    ups = fake.topics("/up")
    assert len(ups) >= 2 and {(p.payload, p.qos) for p in ups} == {(payload, 1)}
    m = g.metrics
    assert m.published_batches.total() == 1 and m.broker_connects.total() >= 2
    assert m.broker_errors.total() == 0  # it had worked: a lost broker, not a failed connect


async def test_an_unacknowledged_birth_or_event_ends_the_session_too(
    tmp_path: Path, fakes: Callable[..., Awaitable[FakeBroker]], gws: Callable[..., _Gw]
) -> None:
    fake = await fakes()
    fake.ack = lambda p: not p.topic.endswith("/status")
    g = gws(tmp_path, [fake], publish_timeout_s=0.3, connect_timeout_s=60.0)
    g.start()
    await g.until(lambda: g.metrics.broker_errors.total() >= 2, timeout_s=5, what="two births unacknowledged")
    assert not g.pub.connected.is_set() and g.pub.last_error == "Operation timed out"

    fake.ack = lambda p: not p.topic.endswith("/event")
    await g.connected()
    g.pub.emit_event({"event": "alarm", "node": 1})
    await g.until(lambda: g.metrics.broker_connects.total() >= 2, timeout_s=5, what="a new session after the event")
    assert g.pub.last_error == "Operation timed out"


async def test_a_reset_while_the_birth_waits_is_named_when_the_publish_times_out(
    tmp_path: Path, fakes: Callable[..., Awaitable[FakeBroker]], gws: Callable[..., _Gw]
) -> None:
    fake = await fakes()
    fake.ack = lambda p: not p.topic.endswith("/status")
    g = gws(tmp_path, [fake], publish_timeout_s=0.3, connect_timeout_s=60.0)
    g.start()
    await g.until(lambda: len(fake.topics("/status")) == 1, what="the birth")
    fake.connack_rc = None
    fake.reset()
    await g.until(lambda: g.pub.last_error != "", timeout_s=5, what="the birth given up")
    assert g.pub.last_error == f"{_RESET} (Operation timed out)"
    assert g.metrics.broker_errors.total() == 1


async def test_offline_on_the_way_out_is_given_up_after_two_seconds_without_its_puback(
    tmp_path: Path, fakes: Callable[..., Awaitable[FakeBroker]], gws: Callable[..., _Gw]
) -> None:
    fake = await fakes()
    fake.ack = lambda p: p.json().get("state") != "offline"
    g = gws(tmp_path, [fake], connect_timeout_s=60.0)
    g.start()
    await g.connected()
    t0 = time.monotonic()
    await asyncio.wait_for(g.pub.announce_offline(), 10)  # a shutdown is not held up
    assert time.monotonic() - t0 >= 1.99  # its timeout: 2 s
    offline = fake.topics("/status")[-1]
    assert (offline.qos, offline.retain, offline.json()) == (1, True, OFFLINE)


async def test_a_broker_that_never_answers_connect_is_given_up_and_a_cancel_stops_at_once(
    tmp_path: Path, fakes: Callable[..., Awaitable[FakeBroker]], gws: Callable[..., _Gw]
) -> None:
    fake = await fakes()
    fake.connack_rc = None
    g = gws(tmp_path, [fake], connect_timeout_s=0.3)
    g.start()
    await g.until(lambda: g.metrics.broker_errors.total() >= 2, what="two connects given up")
    assert not g.pub.connected.is_set() and g.pub.last_error != ""
    n = len(fake.connects)
    await g.until(lambda: len(fake.connects) > n, what="a CONNECT waiting for its CONNACK")
    assert g.task is not None
    g.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(g.task, 5)


async def test_a_broker_that_stops_answering_is_left_within_the_keepalive_bound(
    tmp_path: Path, fakes: Callable[..., Awaitable[FakeBroker]], gws: Callable[..., _Gw]
) -> None:
    fake = await fakes()
    fake.pingresp = False
    g = gws(tmp_path, [fake], keepalive_s=1)
    g.start()
    await g.connected()
    t0 = time.monotonic()
    await g.until(lambda: g.pub.last_error != "", timeout_s=8, what="the session ended")
    assert time.monotonic() - t0 < 2 * 1 + 2 + 2  # the bound, and two seconds of slack
    assert g.pub.last_error == ("keepalive_timeout: nothing from the broker for 2 x keepalive_s "
                                "(detected within 4 s of its last byte)")
    assert g.metrics.broker_errors.total() == 0  # it had worked: a lost broker


async def test_a_reset_is_named_and_leaves_nothing_connected(
    tmp_path: Path, fakes: Callable[..., Awaitable[FakeBroker]], gws: Callable[..., _Gw]
) -> None:
    fake = await fakes()
    g = gws(tmp_path, [fake])
    g.start()
    await g.connected()
    assert g.metrics.broker_connected.get() == 1
    fake.connack_rc = 5  # from now on: not authorised
    fake.reset()
    await g.until(lambda: g.metrics.broker_errors.total() >= 1, what="the reconnect refused")
    assert not g.pub.connected.is_set() and g.metrics.broker_connected.get() == 0
    assert g.metrics.broker_connects.total() == 1
    await g.pub.announce_offline()  # no session: nothing sent, no error
    assert [s["state"] for s in _status(fake)] == ["online"]


async def test_a_reset_mid_session_is_named_with_the_transport_error(
    tmp_path: Path, fakes: Callable[..., Awaitable[FakeBroker]], gws: Callable[..., _Gw]
) -> None:
    fake = await fakes()
    fake.ack = lambda p: not p.topic.endswith("/up")
    g = gws(tmp_path, [fake])
    g.commit(1)
    g.start()
    await g.until(lambda: len(fake.topics("/up")) == 1, what="an uplink in flight")
    fake.connack_rc = None
    fake.reset()
    await g.until(lambda: g.pub.last_error != "", what="the session ended")
    # paho's own error first (it never raises it), then what the session saw.
    error = g.pub.last_error
    assert error.startswith(f"{_RESET} (") and error.count(_RESET) == 1, error
    assert g.outbox.depth == 1


async def test_a_reset_while_waiting_for_connack_fails_the_connect_at_once(
    tmp_path: Path, fakes: Callable[..., Awaitable[FakeBroker]], gws: Callable[..., _Gw]
) -> None:
    fake = await fakes()
    fake.connack_rc = None
    g = gws(tmp_path, [fake], connect_timeout_s=30.0)
    g.start()
    await g.until(lambda: len(fake.connects) == 1, what="a CONNECT")
    fake.reset()
    await g.until(lambda: g.metrics.broker_errors.total() == 1, what="the connect failed, not timed out")
    assert g.pub.last_error.startswith(_RESET), g.pub.last_error


# -- brokers in turn ----------------------------------------------------------------------------


async def test_fails_over_in_list_order_and_fails_back_without_a_wait(
    tmp_path: Path, fakes: Callable[..., Awaitable[FakeBroker]], gws: Callable[..., _Gw],
    draws: _Draws, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(publisher_mod, "_FAILBACK_CHECK_S", 0.01)
    first, second, third = await fakes(), await fakes(), await fakes()
    first.connack_rc = 5  # refused
    up_s: dict[int, float] = {}
    asked: list[int] = []

    def preferred_up_s(i: int) -> float | None:
        asked.append(i)
        return up_s.get(i)

    g = gws(tmp_path, [first, second, third], preferred_up_s=preferred_up_s)
    g.start()
    await g.connected()
    assert g.pub.broker_index == 1 and g.pub.broker == f"127.0.0.1:{second.port}"
    assert len(first.connects) == 1 and third.connects == []
    assert g.metrics.broker_errors.total() == 1

    first.connack_rc = 0
    up_s[0] = 4.99  # reachable, not yet long enough (failback_s = 5)
    await g.until(lambda: asked.count(0) >= 3, what="the preferred broker looked at")
    assert g.pub.broker_index == 1 and len(first.connects) == 1
    n_draws = len(draws.calls)
    up_s[0] = 5.0
    await g.until(lambda: g.pub.broker_index == 0 and g.pub.connected.is_set(), what="back on the first")
    assert len(draws.calls) == n_draws, "a failback waited out a backoff"
    assert third.connects == [] and g.pub.broker == f"127.0.0.1:{first.port}"
    assert g.pub.last_error == f"failback to 127.0.0.1:{first.port} (reachable for 5 s)"
    left = second.topics("/status")[-1]
    assert (left.qos, left.retain) == (1, True)
    assert left.json() == {**OFFLINE, "moved_to": f"127.0.0.1:{first.port}"}
    assert second.wills == []  # left with DISCONNECT: its own offline stands
    assert [s["state"] for s in _status(first)] == ["online"]


async def test_a_failback_whose_offline_is_not_acknowledged_leaves_after_publish_timeout_s(
    tmp_path: Path, fakes: Callable[..., Awaitable[FakeBroker]], gws: Callable[..., _Gw], draws: _Draws,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(publisher_mod, "_FAILBACK_CHECK_S", 0.01)
    first, second, third = await fakes(), await fakes(), await fakes()
    first.connack_rc = 5
    second.ack = lambda p: "moved_to" not in p.json()
    up = [False]
    g = gws(tmp_path, [first, second, third], preferred_up_s=lambda i: 60.0 if up[0] and i == 0 else None,
            publish_timeout_s=0.3, connect_timeout_s=60.0)
    g.start()
    await g.connected()
    assert g.pub.broker_index == 1
    n_draws = len(draws.calls)
    first.connack_rc = 0
    up[0] = True
    await g.until(lambda: g.pub.broker_index == 0 and g.pub.connected.is_set(), timeout_s=5,
                  what="on the first broker")
    assert second.topics("/status")[-1].json()["moved_to"] == f"127.0.0.1:{first.port}"
    # To the broker it was failing back to, at once: not the next in the list after a backoff.
    assert third.connects == [] and len(draws.calls) == n_draws
    # Left without DISCONNECT, so the broker it left publishes the will: only the broker in
    # use says "online".
    await g.until(lambda: len(second.wills) == 1, timeout_s=5, what="the will on the broker it left")
    assert second.wills[0].json() == OFFLINE and (second.wills[0].qos, second.wills[0].retain) == (1, True)
    # Only that session: the next one, on the first broker, ends with DISCONNECT again.
    assert g.task is not None
    g.task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await g.task
    await first.idle()
    assert first.wills == [] and len(second.wills) == 1


async def test_backoff_doubles_from_backoff_min_to_its_cap_and_restarts_after_a_session(
    tmp_path: Path, fakes: Callable[..., Awaitable[FakeBroker]], gws: Callable[..., _Gw], draws: _Draws
) -> None:
    port = free_port()
    g = gws(tmp_path, [SimpleNamespace(host="127.0.0.1", port=port)], backoff_min_s=0.001, backoff_max_s=1e9)
    g.start()
    await g.until(lambda: len(draws.calls) >= 23, what="23 refused connects")
    # Full jitter from backoff_min_s / 2 up to backoff_min_s x 2^attempt, the exponent capped at 20.
    assert draws.calls[:23] == [(0.0005, 0.001 * 2 ** min(k, 20)) for k in range(1, 24)]
    assert g.metrics.broker_errors.total() >= 23

    g.pub.mqtt.backoff_max_s = 0.005  # now the cap is backoff_max_s
    n = len(draws.calls)
    await g.until(lambda: len(draws.calls) > n, what="one more")
    assert draws.calls[n] == (0.0005, 0.005)

    fake = await fakes(port)
    await g.connected()
    n = len(draws.calls)
    fake.connack_rc = 5  # refused from now on
    fake.reset()  # the session ends; the backoff starts again from the first step
    await g.until(lambda: len(draws.calls) >= n + 1, what="the backoff after a lost broker")
    assert draws.calls[n] == (0.0005, 0.002)


async def test_end_session_ends_the_session_and_cuts_a_backoff_short(
    tmp_path: Path, fakes: Callable[..., Awaitable[FakeBroker]], gws: Callable[..., _Gw], draws: _Draws,
    caplog: pytest.LogCaptureFixture
) -> None:
    fake = await fakes()
    g = gws(tmp_path, [fake])
    g.start()
    await g.connected()
    draws.wait_s = 3600.0  # a backoff that would outlast the test
    fake.connack_rc = 5  # the new credentials are refused
    g.pub.end_session("credentials changed")
    await g.until(lambda: g.metrics.broker_errors.total() == 1, what="a reconnect at once, refused")
    assert len(draws.calls) == 2 and not g.pub.connected.is_set()  # now waiting out the second
    lost = [r.getMessage() for r in caplog.records if "event=broker_lost" in r.getMessage()]
    assert lost == [f"event=broker_lost broker=127.0.0.1:{fake.port} error=credentials changed"]
    fake.connack_rc = 0
    g.pub.end_session("reloaded again")
    await g.connected()
    assert len(fake.connects) == 3 and len(draws.calls) == 2


async def test_an_outbox_error_ends_the_session_not_the_publisher_and_not_the_broker(
    tmp_path: Path, fakes: Callable[..., Awaitable[FakeBroker]], gws: Callable[..., _Gw]
) -> None:
    a, b = await fakes(), await fakes()
    g = gws(tmp_path, [a, b])
    real_peek = g.outbox.peek
    failures = [sqlite3.OperationalError("disk I/O error")]

    def peek(after_id: int, limit: int) -> Any:
        if failures:
            raise failures.pop()
        return real_peek(after_id, limit)

    g.outbox.peek = peek  # type: ignore[method-assign]
    g.bugs_expected = True
    (payload,) = g.commit(1)
    g.start()
    await g.until(lambda: g.outbox.depth == 0, what="sent after the error")
    assert g.pub.last_error == "OperationalError: disk I/O error"
    assert [p.payload for p in a.topics("/up")] == [payload] and b.connects == []  # no failover
    assert g.metrics.broker_errors.total() == 0


async def test_mqtt5_unanswered_falls_back_to_311_and_remembers(
    tmp_path: Path, fakes: Callable[..., Awaitable[FakeBroker]], gws: Callable[..., _Gw]
) -> None:
    fake = await fakes()  # leaves an MQTT 5 CONNECT unanswered, as amqtt does
    g = gws(tmp_path, [fake], protocol="auto", connect_timeout_s=0.3)
    g.start()
    await g.connected()
    assert [c.level for c in fake.connects] == [5, 4] and g.pub.protocol == "3.1.1"
    fake.reset()
    await g.until(lambda: len(fake.connects) == 3 and g.pub.connected.is_set(), what="reconnected")
    assert [c.level for c in fake.connects] == [5, 4, 4]
