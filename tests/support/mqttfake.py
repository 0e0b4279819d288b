"""A scripted MQTT 3.1.1 server for the publisher's tests.

It records every CONNECT and PUBLISH as it came off the wire (QoS and retain flags, the will,
the client id, the password), and the wills a real broker would publish (a connection the
client closed without DISCONNECT: ``wills``), and misbehaves on cue: no CONNACK, a refusing CONNACK, PUBACKs
withheld for chosen messages, no PINGRESP, a reset (RST) of every connection, an MQTT 5
CONNECT left unanswered (as amqtt does). The real broker (urbansense.broker, mosquitto) is
the reference for what works; a broker that fails in one exact way on cue is this one.

Only what the gateway's publisher sends is understood: CONNECT, PUBLISH (QoS 0/1), PINGREQ,
DISCONNECT. An MQTT 5 CONNECT is recorded (its protocol level only) and never answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass(frozen=True)
class Connect:
    level: int  # 4: MQTT 3.1.1, 5: MQTT 5
    client_id: str = ""
    username: str | None = None
    password: str | None = None
    will: Publish | None = None


def _str(body: bytes, pos: int) -> tuple[bytes, int]:
    n = int.from_bytes(body[pos:pos + 2], "big")
    return body[pos + 2:pos + 2 + n], pos + 2 + n


class FakeBroker:
    def __init__(self, port: int = 0) -> None:
        self.host = "127.0.0.1"
        self.port = port
        self.connack_rc: int | None = 0  # None: CONNECT never answered; > 0: refused with it
        self.pingresp = True
        self.ack: Callable[[Publish], bool] = lambda p: True  # False: its PUBACK is held
        self.connects: list[Connect] = []
        self.publishes: list[Publish] = []
        self.wills: list[Publish] = []  # published by the broker: the client left without DISCONNECT
        self._aborted: set[asyncio.StreamWriter] = set()  # closed by reset(), not by the client
        self._closed = asyncio.Condition()  # notified as each connection ends
        self.held: list[tuple[asyncio.StreamWriter, bytes]] = []  # PUBACKs not sent (writer, id)
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> FakeBroker:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def topics(self, suffix: str) -> list[Publish]:
        return [p for p in self.publishes if p.topic.endswith(suffix)]

    async def idle(self, timeout_s: float = 5.0) -> None:
        """Until no client is connected (each connection's end seen, its will recorded)."""
        async with self._closed:
            await asyncio.wait_for(self._closed.wait_for(lambda: not self._writers), timeout_s)

    def release(self) -> None:
        """Send the PUBACKs held so far."""
        for w, pid in self.held:
            if not w.is_closing():
                w.write(b"\x40\x02" + pid)
        self.held.clear()

    def reset(self) -> None:
        """Every open connection ends with a TCP reset (a broker that crashed, a NAT timeout)."""
        for w in list(self._writers):
            sock = w.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self._aborted.add(w)
            w.transport.abort()
        self._writers.clear()

    async def stop(self) -> None:
        self.reset()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self._writers.add(w)
        will: Publish | None = None
        clean = False
        try:
            while True:
                head = (await r.readexactly(1))[0]
                n = shift = 0
                while True:
                    b = (await r.readexactly(1))[0]
                    n |= (b & 0x7F) << shift
                    shift += 7
                    if b < 0x80:
                        break
                body = await r.readexactly(n)
                kind = head >> 4
                if kind == 1:
                    self._connect(body, w)
                    will = self.connects[-1].will if self.connack_rc == 0 else None
                elif kind == 3:
                    self._publish(head, body, w)
                elif kind == 12 and self.pingresp:
                    w.write(b"\xd0\x00")
                elif kind == 14:
                    clean = True
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if will is not None and not clean and w not in self._aborted:
                self.wills.append(will)
            self._writers.discard(w)
            async with self._closed:
                self._closed.notify_all()
            w.close()

    def _connect(self, body: bytes, w: asyncio.StreamWriter) -> None:
        _, pos = _str(body, 0)
        level, flags = body[pos], body[pos + 1]
        if level != 4:
            self.connects.append(Connect(level))
            return  # unanswered
        pos += 4  # level, flags, keepalive
        client_id, pos = _str(body, pos)
        will = username = password = None
        if flags & 0x04:
            topic, pos = _str(body, pos)
            message, pos = _str(body, pos)
            will = Publish(topic.decode(), message, (flags >> 3) & 3, bool(flags & 0x20))
        if flags & 0x80:
            raw, pos = _str(body, pos)
            username = raw.decode()
        if flags & 0x40:
            raw, pos = _str(body, pos)
            password = raw.decode()
        self.connects.append(Connect(level, client_id.decode(), username, password, will))
        if self.connack_rc is not None:
            w.write(bytes([0x20, 2, 0, self.connack_rc]))

    def _publish(self, head: int, body: bytes, w: asyncio.StreamWriter) -> None:
        qos = (head >> 1) & 3
        topic, pos = _str(body, 0)
        pid = body[pos:pos + 2] if qos else b""
        p = Publish(topic.decode(), body[pos + len(pid):], qos, bool(head & 1))
        self.publishes.append(p)
        if qos == 1:
            if self.ack(p):
                w.write(b"\x40\x02" + pid)
            else:
                self.held.append((w, pid))
