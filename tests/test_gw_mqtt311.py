"""MQTT 3.1.1 fallback against a real broker that speaks nothing newer (amqtt, which leaves
an MQTT 5 CONNECT carrying a will unanswered): the gateway probes 3.1.1 after the silent v5
attempt, stays on it, and forwards, with its retained birth and downlink subscription."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway.app import Gateway
from tests.test_gw_support import Subscriber, frame, make_config, wait_for
from urbansense.broker import free_port

pytest.importorskip("amqtt")

_BROKER = """
import asyncio, sys
from amqtt.broker import Broker

async def main() -> None:
    b = Broker({"listeners": {"default": {"type": "tcp", "bind": sys.argv[1]}},
                "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                            {"allow_anonymous": True}}})
    await b.start()
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@dataclass
class Mqtt311Broker:
    host: str
    port: int


@pytest.fixture
def broker311() -> Iterator[Mqtt311Broker]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", _BROKER, f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the broker says it listens (or exits)
        assert line.strip() == "ready", f"amqtt did not start: {line!r}"
        yield Mqtt311Broker("127.0.0.1", port)
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
async def sub311(broker311: Mqtt311Broker) -> AsyncIterator[Subscriber]:
    s = Subscriber(broker311, persistent=True).start()  # persistent = a 3.1.1 session
    await asyncio.wait_for(s.ready.wait(), 10)
    yield s
    await s.stop()


async def test_mqtt5_refused_falls_back_to_311(
    tmp_path: Path, broker311: Mqtt311Broker, sub311: Subscriber, caplog: Any
) -> None:
    cfg = make_config(tmp_path, broker311)
    assert cfg.mqtt.protocol == "auto"
    cfg.mqtt.connect_timeout_s = 1.0  # the unanswered v5 CONNECT costs one timeout
    gw = Gateway(cfg)
    task = asyncio.create_task(gw.run())
    try:
        await asyncio.wait_for(gw.started.wait(), 10)
        assert gw.publisher is not None
        await asyncio.wait_for(gw.publisher.connected.wait(), 15)
        assert gw.publisher.protocol == "3.1.1"
        assert any("event=mqtt5_refused" in r.getMessage() for r in caplog.records)
        gw.feed(frame(1, 3, {5: 3300}), "t")
        await wait_for(lambda: (1, 3) in sub311.keys(), timeout_s=15, what="frame via 3.1.1")
        # Retained birth, and the downlink subscription works over 3.1.1 too.
        births = [m for m in sub311.messages if str(m.topic).endswith("/status")]
        assert births and json.loads(births[-1].payload)["state"] == "online"  # type: ignore[arg-type]
        # Only once the listener has its SUBACK: a first session keeps nothing sent before.
        await wait_for(lambda: gw.listeners[0].connected_for_s() is not None, timeout_s=15,
                       what="downlink listener subscribed")
        async with aiomqtt.Client(broker311.host, broker311.port,
                                  protocol=aiomqtt.ProtocolVersion.V311) as c:
            await c.publish(f"urbansense/v1/{cfg.site}/{cfg.gateway_id}/down",
                            json.dumps({"node_id": 1, "commands": {"report_interval_s": 900}}), qos=1)
        assert gw.downlinks is not None
        await wait_for(lambda: 1 in gw.downlinks.pending, timeout_s=10, what="downlink queued")
    finally:
        await gw.stop()
        await task
