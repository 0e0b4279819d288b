"""Helpers for the gateway tests (no tests here): nodes, configs, a pty node, a subscriber."""

from __future__ import annotations

import asyncio
import os
import time
import tty
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt

from gateway.config import BrokerAddress, GatewayConfig
from gateway.registry import NodeSpec, write_registry
from simulator.firmware_loader import firmware_module
from urbansense.wire import framing
from urbansense.wire.senml_reader import frames_from_pack

us_proto = firmware_module("us_proto")

ROOT = Path(__file__).resolve().parents[1]

KEYS = {n: bytes(range(n, n + 16)) for n in range(1, 40)}


def frame(node_id: int, fcnt: int, readings: dict[int, Any] | None = None, ftype: int = 0,
          key: bytes | None = None) -> bytes:
    keys = us_proto.Keys(key or KEYS[node_id])
    return us_proto.encode_uplink(keys, node_id, fcnt, ftype, readings or {5: 3600, 11: fcnt & 0xFF}, 64)


def decode_ack(node_id: int, ack: bytes) -> tuple[int, int, dict[int, Any] | None]:
    return us_proto.decode_ack(us_proto.Keys(KEYS[node_id]), node_id, ack)  # type: ignore[no-any-return]


async def wait_for(pred: Callable[[], bool], timeout_s: float = 10.0, what: str = "") -> None:
    """Wait for a condition with a deadline (polls the loop; fails with a message)."""
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or pred}")
        await asyncio.sleep(0.01)


def make_config(tmp: Path, broker: Any, nodes: range = range(1, 6), **kw: Any) -> GatewayConfig:
    reg = tmp / "nodes.jsonl"
    write_registry(reg, [NodeSpec(n, "water", KEYS[n]) for n in nodes])
    cfg = GatewayConfig(site="test-site", gateway_id=kw.pop("gateway_id", "gw-1"), registry=reg,
                        data_dir=tmp / "data")
    cfg.mqtt.brokers = [BrokerAddress(broker.host, broker.port)]
    cfg.mqtt.backoff_min_s = 0.05
    cfg.mqtt.backoff_max_s = 0.5
    cfg.mqtt.connect_timeout_s = 3
    cfg.http.port = 0
    cfg.batch.max_age_s = 0.2
    cfg.batch.ack_max_delay_ms = 20
    cfg.serial.retry_min_s = 0.05
    cfg.serial.retry_max_s = 0.2
    for k, v in kw.items():
        section, _, name = k.partition("__")
        setattr(getattr(cfg, section), name, v)
    return cfg


class Subscriber:
    """An independent client collecting every decoded frame published to the /up topics."""

    def __init__(self, broker: Any, topic: str = "urbansense/v1/+/+/#", persistent: bool = False) -> None:
        self.broker = broker
        self.persistent = persistent
        self.topic = topic
        self.frames: list[tuple[int, int, dict[str, Any]]] = []
        self.messages: list[aiomqtt.Message] = []
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Subscriber:
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            try:
                # A persistent session (3.1.1, clean_session=False) keeps QoS 1 messages
                # queued for us while we reconnect after a broker restart.
                kw: dict[str, Any] = (
                    {"identifier": "test-subscriber", "clean_session": False,
                     "protocol": aiomqtt.ProtocolVersion.V311}
                    if self.persistent else {"protocol": aiomqtt.ProtocolVersion.V5}
                )
                async with aiomqtt.Client(self.broker.host, self.broker.port, **kw) as c:
                    await c.subscribe(self.topic, qos=1)
                    self.ready.set()
                    async for m in c.messages:
                        self.messages.append(m)
                        if str(m.topic).endswith("/up"):
                            assert isinstance(m.payload, bytes)
                            self.frames.extend(frames_from_pack(m.payload))
            except aiomqtt.MqttError:
                self.ready.clear()
                await asyncio.sleep(0.05)

    def keys(self) -> list[tuple[int, int]]:
        return [(n, f) for n, f, _ in self.frames]

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class PtyNode:
    """The node end of a pty pair: writes serial packets, collects acks."""

    def __init__(self, link: Path | None = None) -> None:
        self.master, slave = os.openpty()
        tty.setraw(slave)
        self.slave_path = os.ttyname(slave)
        os.close(slave)
        self.path = self.slave_path
        if link is not None:
            if link.is_symlink():
                link.unlink()
            link.symlink_to(self.slave_path)
            self.path = str(link)
        self.acks: list[bytes] = []
        self._splitter = framing.PacketSplitter()
        os.set_blocking(self.master, False)
        asyncio.get_running_loop().add_reader(self.master, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 4096)
        except OSError:
            return
        for p in self._splitter.feed(data):
            self.acks.append(framing.unwrap(p))

    def send(self, frame_bytes: bytes) -> None:
        os.write(self.master, framing.wrap(frame_bytes))

    def send_raw(self, data: bytes) -> None:
        os.write(self.master, data)

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.master)
        os.close(self.master)
