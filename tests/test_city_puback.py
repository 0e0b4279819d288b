"""What a gateway's acknowledgement means on the city path (docs/CITY.md, "What a PUBACK means").

nats-server 2.9's MQTT listener PUBACKs a QoS 1 PUBLISH once the message is in its own
``$MQTT_msgs`` stream (server/mqtt.go, ``mqttProcessPub``, tag v2.9.10); the ``URBANSENSE``
stream gets a core-NATS copy that only its leader subscribes to (server/stream.go,
``setLeader`` -> ``subscribeToStream``), unacknowledged. Killing that stream's leader while a
gateway publishes through another node opens the window: the control below shows PUBACKed
batches lost with ``publish.backend = "mqtt"``, and the test above it shows none lost with
``"jetstream"`` (each batch deleted at the stream's own PubAck).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from collector.app import Collector
from collector.config import CollectorConfig, SourceConfig
from gateway.app import Gateway
from gateway.config import BrokerAddress
from gateway.jspublisher import msg_id, subject_of
from tests.test_gw_support import frame, make_config, wait_for

pytestmark = pytest.mark.timeout(180)


async def stream_leaders(nc: Any) -> dict[str, int]:
    """Stream name -> index of the node leading it (n1 -> 0); ``$MQTT_msgs`` once an MQTT
    client has made it."""
    from nats.js.errors import NotFoundError

    js = nc.jetstream(timeout=5)
    out = {}
    for name in ("URBANSENSE", "$MQTT_msgs"):
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            if name == "URBANSENSE":
                raise
            continue
        assert info.cluster is not None and info.cluster.leader
        out[name] = int(info.cluster.leader.lstrip("n")) - 1
    return out


async def place_stream_leader(nc: Any, ok: Any, move: tuple[str, ...] = ("URBANSENSE",)) -> int:
    """Step the leaders of ``move`` down until ``ok(leaders)``; returns URBANSENSE's node."""
    for _ in range(60):
        try:
            leaders = await stream_leaders(nc)
        except Exception:  # electing after a step-down: ask again
            await asyncio.sleep(0.2)
            continue
        if ok(leaders):
            return leaders["URBANSENSE"]
        for name in move:
            with contextlib.suppress(Exception):  # a loaded machine: no answer in time, ask again
                await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{name}", b"", timeout=5)
        await asyncio.sleep(0.5)
    raise AssertionError("could not place the stream leader")


async def _kill_the_stream_leader_under_load(tmp_path: Path, cluster: Any, backend: str) -> tuple[int, int, int]:
    """A gateway publishing through node g, the stream's leader on another node (and, for
    MQTT, not on the ``$MQTT_msgs`` leader's either) SIGKILLed mid-load. Returns (frames
    accepted, frames the gateway counts as acknowledged, frames stored)."""
    import nats

    g = 0
    col = Collector(CollectorConfig(
        collector_id="c1", source=SourceConfig(kind="jetstream", servers=cluster.urls, ack_wait_s=5.0),
        store_url=f"sqlite:///{tmp_path / 'city.db'}", http_port=0, max_messages=64, fetch_timeout_s=0.2))
    col_task = asyncio.create_task(col.run())
    nc = await nats.connect(servers=cluster.urls, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    gw: Gateway | None = None
    gw_task = None
    nodes = range(1, 11)
    try:
        await asyncio.wait_for(col.started.wait(), 30)
        cfg = make_config(tmp_path, SimpleNamespace(host="127.0.0.1", port=cluster.mqtt_ports[g]),
                          nodes=nodes, gateway_id="gw0")
        cfg.mqtt.protocol = "3.1.1"
        cfg.mqtt.brokers = [BrokerAddress("127.0.0.1", cluster.mqtt_ports[g])]
        cfg.publish.backend = backend
        cfg.publish.servers = [cluster.urls[g]]
        gw = Gateway(cfg)
        gw_task = asyncio.create_task(gw.run())
        await asyncio.wait_for(gw.started.wait(), 10)
        assert gw.publisher is not None
        await asyncio.wait_for(gw.publisher.connected.wait(), 30)
        # The downlink listener's MQTT session exists: so does $MQTT_msgs.
        await wait_for(lambda: gw is not None and all(lis.connected_for_s() is not None for lis in gw.listeners),
                       timeout_s=30, what="listener up")
        victim = await place_stream_leader(
            nc, lambda ld: ld["URBANSENSE"] not in (g, ld["$MQTT_msgs"]))
        sent = 0
        for fcnt in range(1, 41):
            for n in nodes:
                gw.feed(frame(n, fcnt), "t", rssi_dbm=-60)
                sent += 1
            if fcnt == 10:
                await asyncio.to_thread(cluster.node(victim).kill)
            await asyncio.sleep(0.05)
        await wait_for(lambda: gw is not None and gw.metrics.frames_accepted.total() == sent
                       and gw.metrics.published_readings.total() >= sent and gw.metrics.outbox_depth.get() == 0,
                       timeout_s=90, what="the gateway drained")
        db = tmp_path / "city.db"
        if backend == "jetstream":
            await wait_for(lambda: _stored(db) >= sent, timeout_s=60, what="every frame stored")
        # Caught up: nothing pending or unacknowledged in the consumer, twice over a fetch.
        for _ in range(2):
            await wait_for(lambda: col.metrics.pending.get() == 0, timeout_s=60, what="consumer drained")
            col.metrics.pending.set(-1)
        return sent, int(gw.metrics.published_readings.total()), _stored(db)
    finally:
        if gw is not None:
            await gw.stop()
        if gw_task is not None:
            await asyncio.gather(gw_task, return_exceptions=True)
        await col.stop()
        await asyncio.gather(col_task, return_exceptions=True)
        await nc.close()


def _stored(db: Path) -> int:
    try:
        with sqlite3.connect(db) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet
        return 0


async def test_with_the_jetstream_backend_no_acknowledged_batch_is_lost_when_the_stream_leader_dies(
        tmp_path: Path, nats_cluster: Any) -> None:
    sent, acked, stored = await _kill_the_stream_leader_under_load(tmp_path, nats_cluster, "jetstream")
    assert (acked, stored) == (sent, sent)


async def test_control_with_the_mqtt_backend_puback_batches_are_lost_when_the_stream_leader_dies(
        tmp_path: Path, nats_cluster: Any) -> None:
    """The window docs/CITY.md describes: every frame PUBACKed, some never in the stream."""
    sent, acked, stored = await _kill_the_stream_leader_under_load(tmp_path, nats_cluster, "mqtt")
    assert acked == sent
    assert stored < sent


def test_a_batch_keeps_its_message_id_and_two_outboxes_numbering_alike_do_not_collide() -> None:
    assert msg_id("gw0", 7, b"abc") == msg_id("gw0", 7, b"abc")
    assert msg_id("gw0", 7, b"abc") != msg_id("gw0", 7, b"abd")  # a fresh outbox's batch 7
    assert msg_id("gw0", 7, b"abc") != msg_id("gw1", 7, b"abc")
    assert subject_of("urbansense/v1/angers/gw-nord/up") == "urbansense.v1.angers.gw-nord.up"


async def test_a_batch_published_before_the_stream_exists_waits_for_it(tmp_path: Path, nats_cluster: Any) -> None:
    """No stream captures the subject yet: "no responders" leaves the batches in the outbox;
    the first collector creates the stream and they arrive, none lost."""
    cfg = make_config(tmp_path, SimpleNamespace(host="127.0.0.1", port=nats_cluster.mqtt_ports[0]),
                      nodes=range(1, 6), gateway_id="gw0")
    cfg.mqtt.protocol = "3.1.1"
    cfg.publish.backend = "jetstream"
    cfg.publish.servers = nats_cluster.urls
    gw = Gateway(cfg)
    gw_task = asyncio.create_task(gw.run())
    col = Collector(CollectorConfig(
        collector_id="c1", source=SourceConfig(kind="jetstream", servers=nats_cluster.urls, ack_wait_s=5.0),
        store_url=f"sqlite:///{tmp_path / 'city.db'}", http_port=0, max_messages=64, fetch_timeout_s=0.2))
    col_task: asyncio.Task[None] | None = None
    try:
        await asyncio.wait_for(gw.started.wait(), 10)
        for n in range(1, 6):
            gw.feed(frame(n, 1), "t", rssi_dbm=-60)
        await wait_for(lambda: gw.metrics.outbox_depth.get() >= 1, timeout_s=30, what="in the outbox")
        errors = gw.metrics.broker_errors.total()
        await wait_for(lambda: gw.metrics.broker_errors.total() >= errors + 2, timeout_s=30, what="refused twice more")
        assert gw.metrics.published_readings.total() == 0 and gw.metrics.outbox_depth.get() >= 1
        col_task = asyncio.create_task(col.run())
        await wait_for(lambda: _stored(tmp_path / "city.db") == 5, timeout_s=60, what="stored once the stream exists")
    finally:
        await gw.stop()
        await asyncio.gather(gw_task, return_exceptions=True)
        await col.stop()
        if col_task is not None:
            await asyncio.gather(col_task, return_exceptions=True)


async def test_a_batch_published_again_after_a_crash_is_stored_once_in_the_stream(
        tmp_path: Path, nats_cluster: Any) -> None:
    """The stream's PubAck came but the outbox's delete never reached the disk (deletes wait up
    to ``outbox.ack_flush_s``; a crash loses them): the restarted gateway publishes the same
    batches again, with the same ``Nats-Msg-Id``, and the stream keeps one copy of each."""
    import shutil

    import nats

    from collector.sources import JetStreamSource
    from gateway.jspublisher import JetStreamPublisher
    from gateway.metrics import Metrics
    from gateway.mqttclient import Credentials
    from gateway.outbox import PRIORITY_ORDINARY, Outbox

    source = JetStreamSource(SourceConfig(kind="jetstream", servers=nats_cluster.urls), "c1")
    await source.start()  # the stream, as the first collector creates it
    await source.close()
    cfg = make_config(tmp_path, SimpleNamespace(host="127.0.0.1", port=nats_cluster.mqtt_ports[0]))
    cfg.publish.backend = "jetstream"
    cfg.publish.servers = nats_cluster.urls
    path = tmp_path / "outbox.db"
    ob = Outbox(path, 1 << 20)
    for i in range(3):
        ob.commit_batch(f"pack {i}".encode(), 1, PRIORITY_ORDINARY)
    ob.close()
    shutil.copy(path, tmp_path / "as-on-disk-at-the-crash.db")

    async def publish_all(outbox_path: Path) -> Metrics:
        m = Metrics()
        outbox = Outbox(outbox_path, 1 << 20, m)
        pub = JetStreamPublisher(cfg, outbox, m, Credentials(cfg.mqtt))
        task = asyncio.create_task(pub.run())
        try:
            await wait_for(lambda: m.published_batches.total() == 3, timeout_s=60, what="3 PubAcks")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            outbox.close()
        return m

    await publish_all(path)
    again = await publish_all(tmp_path / "as-on-disk-at-the-crash.db")
    assert again.published_batches.total() == 3  # a duplicate's PubAck is an ack
    nc = await nats.connect(servers=nats_cluster.urls)
    try:
        info = await nc.jetstream(timeout=10).stream_info("URBANSENSE", subjects_filter=">")
        assert info.state.subjects is not None
        assert info.state.subjects[subject_of(f"{cfg.topic_prefix}/up")] == 3
    finally:
        await nc.close()


async def test_a_hung_nats_node_is_left_by_pings_not_by_the_publish_timeout(
        tmp_path: Path, nats_cluster: Any) -> None:
    """SIGSTOP the node the gateway publishes through: nats-py's pings (``keepalive_s`` apart,
    the third unanswered drops it) move it to the next server long before a publish would time
    out (``publish_timeout_s`` 60 s here); what it accepted meanwhile reaches the stream."""
    import signal

    import nats

    from collector.sources import JetStreamSource

    source = JetStreamSource(SourceConfig(kind="jetstream", servers=nats_cluster.urls), "c1")
    await source.start()
    await source.close()
    # The stream led elsewhere: a hung leader would hold a publish until publish_timeout_s
    # (seen under load: the first publish after the reconnect reached node 0 before the
    # stream's new leader was elected), which is not what this test is about.
    nc = await nats.connect(servers=nats_cluster.urls)
    try:
        await place_stream_leader(nc, lambda ld: ld["URBANSENSE"] != 0)
    finally:
        await nc.close()
    cfg = make_config(tmp_path, SimpleNamespace(host="127.0.0.1", port=nats_cluster.mqtt_ports[0]),
                      nodes=range(1, 6))
    cfg.mqtt.protocol = "3.1.1"
    cfg.mqtt.keepalive_s = 1
    cfg.mqtt.publish_timeout_s = 60.0
    cfg.publish.backend = "jetstream"
    cfg.publish.servers = nats_cluster.urls
    gw = Gateway(cfg)
    task = asyncio.create_task(gw.run())
    proc = None
    try:
        await asyncio.wait_for(gw.started.wait(), 10)
        assert gw.publisher is not None
        await asyncio.wait_for(gw.publisher.connected.wait(), 30)
        first = gw.publisher.broker
        assert first == nats_cluster.urls[0].removeprefix("nats://")
        proc = nats_cluster.node(0)._proc
        assert proc is not None
        proc.send_signal(signal.SIGSTOP)
        t0 = asyncio.get_running_loop().time()
        for n in range(1, 6):
            gw.feed(frame(n, 1), "t", rssi_dbm=-60)
        await wait_for(lambda: gw.publisher is not None and gw.publisher.broker not in ("", first)
                       and gw.metrics.published_readings.total() == 5, timeout_s=30, what="on another node")
        assert asyncio.get_running_loop().time() - t0 < 20  # well under publish_timeout_s
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGCONT)
        await gw.stop()
        await asyncio.gather(task, return_exceptions=True)


class _AuthNode:
    """One nats-server, JetStream on, a user and password (re-read on SIGHUP): the NATS side
    of the gateway's ``mqtt.username`` / ``mqtt.password_file``."""

    def __init__(self, workdir: Path) -> None:
        from urbansense.broker import free_port
        from urbansense.natscluster import find_nats_server

        self.workdir = workdir
        self.port, self.http = free_port(), free_port()
        self.conf = workdir / "nats.conf"
        self.binary = find_nats_server()
        self.proc: Any = None

    def write(self, password: str) -> None:
        self.conf.write_text(
            f"listen: 127.0.0.1:{self.port}\nhttp: 127.0.0.1:{self.http}\n"
            f'jetstream {{ store_dir: "{self.workdir / "js"}" }}\n'
            f'authorization {{ user: "gw-1", password: "{password}" }}\n')

    def start(self) -> None:
        import subprocess
        import time
        import urllib.request

        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/healthz", timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


async def test_the_jetstream_backend_authenticates_with_the_mqtt_credentials_and_rereads_them_on_sighup(
        tmp_path: Path) -> None:
    """``mqtt.username`` and ``password_file`` are the NATS user's; a wrong password is a counted
    connect failure and nothing leaves the outbox; after SIGHUP (gateway reload) with the right
    one, a new connection is made and the batches go."""
    import signal

    import nats
    from nats.js.api import StreamConfig

    node = _AuthNode(tmp_path)
    node.write("right")
    await asyncio.to_thread(node.start)
    gw = None
    task = None
    try:
        nc = await nats.connect(f"nats://127.0.0.1:{node.port}", user="gw-1", password="right")
        await nc.jetstream(timeout=10).add_stream(StreamConfig(name="URBANSENSE", subjects=["urbansense.v1.*.*.up",
                                                                 "urbansense.v1.*.*.status"]))
        await nc.close()
        pw = tmp_path / "nats.password"
        pw.write_text("wrong\n")
        pw.chmod(0o600)
        cfg = make_config(tmp_path, SimpleNamespace(host="127.0.0.1", port=1), nodes=range(1, 6))
        cfg.mqtt.username = "gw-1"
        cfg.mqtt.password_file = pw
        cfg.publish.backend = "jetstream"
        cfg.publish.servers = [f"nats://127.0.0.1:{node.port}"]
        gw = Gateway(cfg)
        task = asyncio.create_task(gw.run())
        await asyncio.wait_for(gw.started.wait(), 10)
        for n in range(1, 6):
            gw.feed(frame(n, 1), "t", rssi_dbm=-60)
        await wait_for(lambda: gw is not None and gw.metrics.broker_errors.total() >= 2, timeout_s=30,
                       what="refused connects")
        assert gw.metrics.published_readings.total() == 0
        pw.write_text("right\n")
        gw.reload()
        await wait_for(lambda: gw is not None and gw.metrics.published_readings.total() == 5, timeout_s=30,
                       what="published with the new password")
        # The server's password changes (SIGHUP re-reads its config): the old connection is
        # refused on reconnect; the gateway's reload brings the new one.
        node.write("newer")
        node.proc.send_signal(signal.SIGHUP)
        pw.write_text("newer\n")
        gw.reload()
        for n in range(1, 6):
            gw.feed(frame(n, 2), "t", rssi_dbm=-60)
        await wait_for(lambda: gw is not None and gw.metrics.published_readings.total() == 10, timeout_s=30,
                       what="published after the second change")
    finally:
        if gw is not None:
            await gw.stop()
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        node.stop()
