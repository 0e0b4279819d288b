"""The test infrastructure itself: the MicroPython VM runner and the Mosquitto fixtures."""

from __future__ import annotations

import queue
import socket
import ssl
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.broker import Broker

RunMp = Callable[..., Any]

# -- MicroPython VM -------------------------------------------------------------------------


def test_vm_is_micropython(mpvm: RunMp) -> None:
    r = mpvm("import sys\nprint(sys.implementation.name)\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "micropython"


def test_vm_exception_exits_nonzero_with_traceback(mpvm: RunMp) -> None:
    r = mpvm("def f():\n    raise ValueError('boom')\nprint('before')\nf()\n")
    assert r.returncode == 1
    assert r.stdout.strip() == "before"
    assert "Traceback" in r.stderr
    assert "ValueError: boom" in r.stderr


def test_vm_sys_exit_code(mpvm: RunMp) -> None:
    assert mpvm("import sys\nsys.exit(3)\n").returncode == 3
    assert mpvm("import sys\nsys.exit()\n").returncode == 0


def test_vm_mounted_module_imports(mpvm: RunMp, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    (lib / "pkg").mkdir(parents=True)
    (lib / "us_probe.py").write_text("VALUE = 42\n")
    (lib / "pkg" / "__init__.py").write_text("")
    (lib / "pkg" / "sub.py").write_text("NAME = 'sub'\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "blob.bin").write_bytes(bytes(range(256)))
    r = mpvm(
        "import us_probe, pkg.sub\n"
        "print(us_probe.VALUE, pkg.sub.NAME)\n"
        "b = open('/data/blob.bin', 'rb').read()\n"
        "print(len(b), b[255])\n",
        mounts={str(lib): "/lib", str(data): "/data"},
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["42", "sub", "256", "255"]


def test_vm_gc_mem_alloc_and_modules(mpvm: RunMp) -> None:
    r = mpvm(
        "import gc, struct, hashlib, hmac, binascii, json, micropython\n"
        "from collections import deque\n"
        "from micropython import const\n"
        "gc.collect()\n"
        "a = gc.mem_alloc()\n"
        "x = bytearray(20000)\n"
        "print(gc.mem_alloc() - a >= 20000)\n"
        "print(binascii.hexlify(hashlib.sha256(b'abc').digest()).decode())\n"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [
        "True",
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    ]


def test_vm_top_level_await(mpvm: RunMp) -> None:
    r = mpvm(
        "import asyncio\n"
        "async def main():\n"
        "    await asyncio.sleep_ms(10)\n"
        "    return 7\n"
        "print(await main())\n"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "7"


# -- Mosquitto ------------------------------------------------------------------------------


def _paho_roundtrip(
    broker: Broker, *, username: str | None = None, password: str | None = None
) -> None:
    """Subscribe, publish QoS 1 and receive it back through ``broker``."""
    got: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    connected = threading.Event()
    subscribed = threading.Event()
    codes: list[Any] = []

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}")
    if broker.tls:
        assert broker.ca_path is not None
        client.tls_set(ca_certs=str(broker.ca_path))
    if username is not None:
        client.username_pw_set(username, password)

    def on_connect(c: mqtt.Client, ud: Any, flags: Any, rc: Any, props: Any) -> None:
        codes.append(rc)
        connected.set()

    def on_subscribe(c: mqtt.Client, ud: Any, mid: int, rcs: Any, props: Any) -> None:
        subscribed.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = lambda c, ud, msg: got.put(msg)
    client.connect(broker.host, broker.port, keepalive=10)
    client.loop_start()
    try:
        assert connected.wait(10)
        assert not codes[0].is_failure, codes
        client.subscribe("us/test/#", qos=1)
        assert subscribed.wait(10)
        info = client.publish("us/test/x", b"\x01\x02hello", qos=1)
        info.wait_for_publish(10)
        msg = got.get(timeout=10)
        assert (msg.topic, msg.payload, msg.qos) == ("us/test/x", b"\x01\x02hello", 1)
    finally:
        client.disconnect()
        client.loop_stop()


def test_broker_plain_qos1(mqtt_broker: Broker) -> None:
    assert mqtt_broker.running and not mqtt_broker.tls and mqtt_broker.ca_path is None
    _paho_roundtrip(mqtt_broker)


def test_broker_tls_qos1(mqtt_broker_tls: Broker) -> None:
    assert mqtt_broker_tls.tls and mqtt_broker_tls.ca_path is not None
    _paho_roundtrip(mqtt_broker_tls)


def test_broker_tls_certificate(mqtt_broker_tls: Broker) -> None:
    """The server cert verifies against our CA for 127.0.0.1 and localhost, not without it."""
    addr = (mqtt_broker_tls.host, mqtt_broker_tls.port)
    trusted = ssl.create_default_context(cafile=str(mqtt_broker_tls.ca_path))
    for name in ("127.0.0.1", "localhost"):
        with (
            socket.create_connection(addr, timeout=5) as raw,
            trusted.wrap_socket(raw, server_hostname=name) as tls,
        ):
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    untrusted = ssl.create_default_context()
    with (
        socket.create_connection(addr, timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        untrusted.wrap_socket(raw, server_hostname="127.0.0.1")


def test_broker_auth_qos1(mqtt_broker_auth: Broker) -> None:
    assert mqtt_broker_auth.username and mqtt_broker_auth.password
    _paho_roundtrip(
        mqtt_broker_auth, username=mqtt_broker_auth.username, password=mqtt_broker_auth.password
    )


async def test_broker_auth_rejects_bad_password(mqtt_broker_auth: Broker) -> None:
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(
            mqtt_broker_auth.host,
            mqtt_broker_auth.port,
            username=mqtt_broker_auth.username,
            password="wrong",
        ):
            pass


async def test_broker_tls_aiomqtt(mqtt_broker_tls: Broker) -> None:
    ctx = ssl.create_default_context(cafile=str(mqtt_broker_tls.ca_path))
    async with aiomqtt.Client("localhost", mqtt_broker_tls.port, tls_context=ctx) as client:
        await client.subscribe("us/a", qos=1)
        await client.publish("us/a", b"x", qos=1)
        async for msg in client.messages:
            assert (msg.payload, msg.qos) == (b"x", 1)
            break


def test_broker_stop_start_same_port(mqtt_broker: Broker) -> None:
    port = mqtt_broker.port
    _paho_roundtrip(mqtt_broker)
    mqtt_broker.stop()
    assert not mqtt_broker.running
    mqtt_broker.start()
    assert mqtt_broker.port == port
    _paho_roundtrip(mqtt_broker)
    mqtt_broker.kill()
    assert not mqtt_broker.running
    mqtt_broker.start()
    assert mqtt_broker.port == port
    _paho_roundtrip(mqtt_broker)


def test_client_reconnects_after_outage(mqtt_broker: Broker) -> None:
    """paho's own reconnect finds the restarted broker on the same port."""
    connects = 0
    reconnected = threading.Event()
    first = threading.Event()
    disconnected = threading.Event()

    def on_connect(c: mqtt.Client, ud: Any, flags: Any, rc: Any, props: Any) -> None:
        nonlocal connects
        connects += 1
        (first if connects == 1 else reconnected).set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.reconnect_delay_set(min_delay=1, max_delay=1)
    client.on_connect = on_connect
    client.on_disconnect = lambda *a: disconnected.set()
    client.connect(mqtt_broker.host, mqtt_broker.port, keepalive=5)
    client.loop_start()
    try:
        assert first.wait(10)
        mqtt_broker.kill()
        assert disconnected.wait(10)
        mqtt_broker.start()
        assert reconnected.wait(15)
    finally:
        client.disconnect()
        client.loop_stop()
