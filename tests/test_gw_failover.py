"""A hung broker (SIGSTOP) is detected within the documented keepalive bound and named in the
log; the gateway fails over, fails back when the preferred broker returns, and the retained
status says online only on the broker it is on."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway.config import BrokerAddress
from gateway.mqttclient import keepalive_bound_s
from tests.test_gw_support import frame, make_config, wait_for

KEEPALIVE_S = 2


async def _retained_status(broker: Any) -> dict[str, Any]:
    async with aiomqtt.Client(broker.host, broker.port) as c:
        await c.subscribe("urbansense/v1/test-site/gw-1/status", qos=1)
        async with asyncio.timeout(5):
            async for m in c.messages:
                assert m.retain
                return json.loads(m.payload)  # type: ignore[arg-type, no-any-return]
    raise AssertionError("no retained status")


@pytest.mark.timeout(90)
async def test_a_hung_broker_is_detected_within_the_keepalive_bound_and_the_gateway_fails_back(
    tmp_path: Path, mqtt_broker_factory: Any, running: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: ~40 s (a 30 s publish timeout, then a 10 s connect timeout to the same hung
    broker), logged as 'unhandled errors in a TaskGroup', and the gateway never came back."""
    caplog.set_level(logging.INFO)
    first, second = mqtt_broker_factory(), mqtt_broker_factory()
    cfg = make_config(tmp_path, first, mqtt__keepalive_s=KEEPALIVE_S, mqtt__failback_s=1.0,
                      mqtt__connect_timeout_s=2.0)
    cfg.mqtt.brokers.append(BrokerAddress(second.host, second.port))
    gw = await running(cfg)
    pub = gw.publisher
    assert pub is not None
    await asyncio.wait_for(pub.connected.wait(), 10)
    assert pub.broker_index == 0
    gw.feed(frame(1, 1), "test")
    await wait_for(lambda: gw.metrics.published_readings.total() == 1, what="published via the first")

    first.pause()
    paused_s = time.monotonic()
    try:
        await wait_for(lambda: not pub.connected.is_set(), timeout_s=keepalive_bound_s(KEEPALIVE_S) + 5,
                       what="the hang detected")
        detected_s = time.monotonic() - paused_s
        assert detected_s <= keepalive_bound_s(KEEPALIVE_S) + 0.5
        lost = [r.getMessage() for r in caplog.records if "event=broker_lost" in r.getMessage()]
        assert lost and "keepalive_timeout" in lost[0], lost
        assert not any("TaskGroup" in r.getMessage() for r in caplog.records)
        await wait_for(lambda: pub.connected.is_set() and pub.broker_index == 1, timeout_s=10,
                       what="failover to the second broker")
        gw.feed(frame(1, 2), "test")
        await wait_for(lambda: gw.metrics.published_readings.total() == 2, what="published via the second")
    finally:
        first.resume()

    await wait_for(lambda: pub.connected.is_set() and pub.broker_index == 0, timeout_s=20,
                   what="failback to the first broker")
    assert any("failback" in r.getMessage() for r in caplog.records if "event=broker_lost" in r.getMessage())
    on_first, on_second = await _retained_status(first), await _retained_status(second)
    assert on_first["state"] == "online" and on_first["broker"] == f"{first.host}:{first.port}"
    assert on_second["state"] == "offline" and on_second["moved_to"] == f"{first.host}:{first.port}"


@pytest.mark.timeout(60)
async def test_a_batch_without_puback_ends_the_session_naming_publish_timeout(
    tmp_path: Path, mqtt_broker: Any, running: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: 'unhandled errors in a TaskGroup (1 sub-exception)'."""
    caplog.set_level(logging.INFO)
    gw = await running(make_config(tmp_path, mqtt_broker, mqtt__publish_timeout_s=1.0, mqtt__keepalive_s=30))
    assert gw.publisher is not None
    await asyncio.wait_for(gw.publisher.connected.wait(), 10)
    mqtt_broker.pause()
    try:
        gw.feed(frame(1, 1), "test")
        await wait_for(lambda: any("event=broker_lost" in r.getMessage() for r in caplog.records),
                       timeout_s=15, what="the session ended")
    finally:
        mqtt_broker.resume()
    lost = next(r.getMessage() for r in caplog.records if "event=broker_lost" in r.getMessage())
    assert "publish_timeout: no PUBACK within publish_timeout_s (1 s)" in lost
    assert "TaskGroup" not in lost
    await wait_for(lambda: gw.metrics.published_readings.total() == 1, timeout_s=20, what="sent again")
