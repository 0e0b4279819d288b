"""The city tier's real parts: a 3-node NATS JetStream cluster and a private PostgreSQL."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import paho.mqtt.client as paho
import pytest

pytestmark = pytest.mark.timeout(90)


async def _stream(js: Any, name: str, subjects: list[str]) -> None:
    from nats.js.api import StreamConfig

    await js.add_stream(StreamConfig(name=name, subjects=subjects, num_replicas=3))


async def test_a_replicated_stream_keeps_accepting_when_its_leader_stops(nats_cluster: Any) -> None:
    import nats

    nc = await nats.connect(servers=nats_cluster.urls, max_reconnect_attempts=-1,
                            reconnect_time_wait=0.1)
    try:
        js = nc.jetstream(timeout=10)
        await _stream(js, "T", ["t.>"])
        info = await js.stream_info("T")
        assert info.cluster is not None and info.config.num_replicas == 3
        leader = int(info.cluster.leader.lstrip("n")) - 1
        for i in range(10):
            await js.publish("t.x", str(i).encode())
        nats_cluster.node(leader).stop()
        for i in range(10, 20):
            for _attempt in range(100):  # the new leader is elected within seconds
                try:
                    await js.publish("t.x", str(i).encode(), timeout=2)
                    break
                except (nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError):
                    await asyncio.sleep(0.1)
            else:
                pytest.fail("no stream leader after the old one stopped")
        info = await js.stream_info("T")
        assert info.state.messages == 20
        assert info.cluster is not None and info.cluster.leader != f"n{leader + 1}"
    finally:
        await nc.close()


async def test_an_mqtt_publish_to_any_node_lands_in_the_stream(nats_cluster: Any) -> None:
    import nats

    nc = await nats.connect(servers=nats_cluster.urls)
    try:
        js = nc.jetstream(timeout=10)
        await _stream(js, "UP", ["urbansense.v1.*.*.up"])
        for i, port in enumerate(nats_cluster.mqtt_ports):
            c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"gw{i}",
                            protocol=paho.MQTTv311)
            c.connect("127.0.0.1", port)
            c.loop_start()
            info = c.publish(f"urbansense/v1/site/gw{i}/up", b"pack%d" % i, qos=1)
            info.wait_for_publish(10)
            c.disconnect()
            c.loop_stop()
        sub = await js.pull_subscribe("urbansense.v1.*.*.up", "t")
        msgs = await sub.fetch(3, timeout=10)
        assert sorted(m.data for m in msgs) == [b"pack0", b"pack1", b"pack2"]
        assert {m.subject for m in msgs} == {f"urbansense.v1.site.gw{i}.up" for i in range(3)}
    finally:
        await nc.close()


def test_postgres_runs_unprivileged_and_survives_a_restart(pg_server: Any) -> None:
    import psycopg

    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (x int PRIMARY KEY)")
        conn.execute("INSERT INTO t VALUES (1)")
    owner = os.stat(pg_server.datadir).st_uid
    if os.geteuid() == 0:
        assert owner != 0  # initdb/postgres ran as an unprivileged user
    pg_server.kill()
    pg_server.start()
    with psycopg.connect(pg_server.dsn) as conn:
        assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
