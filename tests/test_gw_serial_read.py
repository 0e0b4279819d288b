"""The serial port's read path (one callback a wake-up, frames handed on synchronously) and the
batcher's one deadline timer: what they must keep (real gateway, real ptys, real broker)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from gateway.flow import Heard
from gateway.transports import serial as serial_mod
from tests.test_gw_support import PtyNode, decode_ack, frame, make_config, wait_for
from urbansense.wire import framing

N_FLOOD = 2000  # about 60 KB of packets: more than a pty holds


async def _writable(loop: asyncio.AbstractEventLoop, fd: int, timeout_s: float = 10.0) -> bool:
    room: asyncio.Future[None] = loop.create_future()
    loop.add_writer(fd, room.set_result, None)
    try:
        await asyncio.wait_for(room, timeout_s)
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_writer(fd)


def _frames(n: int, nodes: int = 5) -> list[tuple[int, int, bytes]]:
    """(node, fcnt, frame), counters rising per node, nodes interleaved."""
    out = []
    for i in range(n):
        node, fcnt = 1 + i % nodes, 1 + i // nodes
        out.append((node, fcnt, frame(node, fcnt)))
    return out


async def test_many_frames_in_one_read_are_all_verified_and_acked_after_their_commit(
    tmp_path: Path, mqtt_broker: Any, running: Any
) -> None:
    node = PtyNode()
    gw = await running(make_config(tmp_path, mqtt_broker, serial__ports=[node.path]))
    port = gw.serial_ports[0]
    await asyncio.wait_for(port.opened.wait(), 5)
    committed_at_ack: list[float] = []
    real_ack = port.write_ack

    def ack(data: bytes) -> None:
        committed_at_ack.append(gw.metrics.readings_committed.total())
        real_ack(data)

    port.write_ack = ack  # type: ignore[method-assign]
    sent = _frames(40)
    node.send_raw(b"".join(framing.wrap(f) for _, _, f in sent))  # one write(2): 40 frames
    await wait_for(lambda: len(node.acks) == 40, what="40 acks")
    acked = sorted((n, decode_ack(n, a)[1]) for n, a in (
        (int.from_bytes(a[1:5], "little"), a) for a in node.acks))
    assert acked == sorted((n, f) for n, f, _ in sent)
    # Every ack was written with its frame's batch on disk (40 frames, one or more batches).
    assert all(c >= 1 for c in committed_at_ack) and committed_at_ack[-1] == 40
    assert gw.metrics.frames_in.get("serial") == 40 and gw.metrics.rejections.total() == 0
    node.close()


async def test_a_packet_split_across_two_reads_is_joined(
    tmp_path: Path, mqtt_broker: Any, running: Any
) -> None:
    node = PtyNode()
    gw = await running(make_config(tmp_path, mqtt_broker, serial__ports=[node.path]))
    await asyncio.wait_for(gw.serial_ports[0].opened.wait(), 5)
    second = framing.wrap(frame(2, 1))
    node.send_raw(framing.wrap(frame(1, 1)) + second[:9])
    await wait_for(lambda: len(node.acks) == 1, what="the whole frame's ack")  # the half was read too
    node.send_raw(second[9:])
    await wait_for(lambda: len(node.acks) == 2, what="the joined frame's ack")
    assert gw.metrics.readings_committed.total() == 2 and gw.metrics.rejections.total() == 0
    node.close()


async def test_a_full_pipeline_stops_the_reading_holds_one_read_at_most_and_loses_nothing(
    tmp_path: Path, mqtt_broker: Any, running: Any
) -> None:
    """Backpressure instead of memory: while the pipeline refuses frames, the port holds what
    one read brought and reads no more (the pty fills, the node's writes stop); once there is
    room every frame arrives, in order, and is acked."""
    node = PtyNode()
    gw = await running(make_config(tmp_path, mqtt_broker, serial__ports=[node.path]))
    port = gw.serial_ports[0]
    await asyncio.wait_for(port.opened.wait(), 5)
    room = asyncio.Event()
    offers: list[int] = []
    real_put = gw.put

    def full(h: Heard) -> bool:
        offers.append(1)
        return False

    async def put(h: Heard) -> None:
        await room.wait()
        await real_put(h)

    gw.offer = full  # type: ignore[method-assign]
    gw.put = put  # type: ignore[method-assign]
    sent = _frames(N_FLOOD)
    data = memoryview(b"".join(framing.wrap(f) for _, _, f in sent))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:  # until the pty refuses once the gateway stopped reading
        try:
            data = data[os.write(node.master, data[:4096]):]
        except BlockingIOError:
            # The gateway may stop reading while this waits for room: look again each 0.1 s.
            if offers or (not await _writable(loop, node.master, 0.1) and offers):
                break
        assert data, "the pty took everything: the gateway never stopped reading"
        assert loop.time() < deadline, "the pty never filled"
    assert len(offers) == 1  # one refusal stopped the reading
    assert 0 < len(port._backlog) <= serial_mod._READ_SIZE // 5  # at most one read's frames
    gw.offer = gw.ingest.offer  # type: ignore[method-assign,union-attr]
    room.set()
    while data:
        try:
            data = data[os.write(node.master, data[:4096]):]
        except BlockingIOError:
            assert await _writable(loop, node.master), "the gateway did not read again"
    await wait_for(lambda: len(node.acks) == N_FLOOD, timeout_s=60, what="every ack")
    assert gw.metrics.readings_committed.total() == N_FLOOD
    assert gw.metrics.rejections.total() == 0  # in order: no replay, no duplicate
    node.close()


async def test_the_batcher_arms_one_timer_a_batch_not_one_a_frame(
    tmp_path: Path, mqtt_broker: Any, running: Any
) -> None:
    """At a street's rates a timer per frame cost more than the frame (issue 16)."""
    node = PtyNode()
    cfg = make_config(tmp_path, mqtt_broker, serial__ports=[node.path])
    cfg.batch.ack_max_delay_ms = 1000
    gw = await running(cfg)
    await asyncio.wait_for(gw.serial_ports[0].opened.wait(), 5)
    loop = asyncio.get_running_loop()
    armed: list[float] = []
    real_call_at = loop.call_at

    def call_at(when: float, cb: Any, *args: Any, **kw: Any) -> asyncio.TimerHandle:
        if getattr(cb, "__func__", None) is type(gw.batcher)._on_timer:
            armed.append(when)
        return real_call_at(when, cb, *args, **kw)

    loop.call_at = call_at  # type: ignore[method-assign]
    try:
        for i, (_, _, f) in enumerate(_frames(20)):
            node.send(f)
            await wait_for(lambda i=i: gw.metrics.frames_in.get("serial") == i + 1, what="frame read")
        await wait_for(lambda: len(node.acks) == 20, what="20 acks")
    finally:
        loop.call_at = real_call_at  # type: ignore[method-assign]
    batches = gw.metrics.batches.total()
    assert batches <= 3  # the ack delay closes them, frames one at a time (a loaded machine: not 1)
    assert len(armed) == batches
    node.close()


async def test_a_frame_offered_while_frames_are_queued_goes_behind_them(
    tmp_path: Path, mqtt_broker: Any, running: Any
) -> None:
    """The direct way is taken only when nothing heard before is still on the way: else a
    node's next frame would overtake its previous one (judged late, or lost to the window)."""
    gw = await running(make_config(tmp_path, mqtt_broker))
    gw.ingress.put_nowait(Heard(frame(1, 1), "test"))  # queued; the verify task has not run
    assert gw.offer(Heard(frame(1, 2), "test"))
    assert gw.ingress.qsize() == 2
    await wait_for(lambda: gw.metrics.readings_committed.total() == 2, what="both committed")
    assert gw.metrics.late_frames.total() == 0
    assert gw.offer(Heard(frame(1, 3), "test"))  # nothing queued now: verified at once
    assert gw.ingress.qsize() == 0 and gw.metrics.frames_accepted.total() == 3
