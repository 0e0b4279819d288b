"""Serial links for serial nodes: a pty pair for a real gateway, or a built-in acker.

The pty's slave path is what the gateway opens with pyserial, as it would /dev/ttyUSB0.
Without a gateway in the loop, ``LoopbackLink`` answers like one (urbansense.wire.protocol's
encoder), so the firmware's ack/backlog logic runs in every simulation.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import termios
import tty
from typing import TYPE_CHECKING, Final

from urbansense.wire import framing
from urbansense.wire.errors import FrameError
from urbansense.wire.protocol import NodeKeys, encode_ack

if TYPE_CHECKING:
    from simulator.node import SimNode

ACK_LATENCY_S: Final = 0.004  # a gateway on a Pi answers in a few ms (outbox write first)


def add_noise(data: bytes, ber: float, rng: random.Random) -> bytes:
    """Flip each bit with probability ``ber`` (line noise on a long cable)."""
    if ber <= 0 or not data:
        return data
    out = bytearray(data)
    nbits = len(out) * 8
    i = int(rng.expovariate(ber)) if ber < 1 else 0
    while i < nbits:
        out[i // 8] ^= 1 << (i % 8)
        i += 1 + int(rng.expovariate(ber))
    return bytes(out)


class _Sniffer:
    """Reads what the node sends (before noise) into the ground truth."""

    def __init__(self) -> None:
        self.splitter = framing.PacketSplitter()

    def frames(self, data: bytes) -> list[bytes]:
        out = []
        for pkt in self.splitter.feed(data):
            try:
                out.append(framing.unwrap(pkt))
            except FrameError:
                continue
        return out


class LoopbackLink:
    """A stand-in gateway that acks every frame it can read (after line noise)."""

    def __init__(self, node: SimNode, gw_id: str, ber: float = 0.0) -> None:
        self.gw_id = gw_id
        self.ber = ber
        self.keys = NodeKeys(node.key)
        self.dcnt = 0
        self.rx: bytearray = bytearray()
        self.rx_at: list[tuple[float, bytes]] = []
        self.sniffer = _Sniffer()
        self.gw_splitter = framing.PacketSplitter()
        self.bad_packets = 0

    def node_write(self, node: SimNode, data: bytes) -> None:
        for frame in self.sniffer.frames(data):
            node.sim.ledger.register_serial_frame(node, node.t, frame, self.gw_id)
        noisy = add_noise(data, self.ber, node.rng_hw)
        for pkt in self.gw_splitter.feed(noisy):
            try:
                frame = framing.unwrap(pkt)
            except FrameError:
                self.bad_packets += 1
                continue
            if len(frame) < 7 or int.from_bytes(frame[1:5], "little") != node.node_id:
                continue
            fcnt = node.sim.serial_fcnt(node, frame)
            if fcnt is None:
                self.bad_packets += 1
                continue
            self.dcnt += 1
            ack = framing.wrap(encode_ack(self.keys, node.node_id, self.dcnt, fcnt))
            self.rx_at.append((node.t + ACK_LATENCY_S, add_noise(ack, self.ber, node.rng_hw)))
            node.sim.ledger.mark_acked(node, fcnt)

    def _deliver(self, node: SimNode) -> None:
        while self.rx_at and self.rx_at[0][0] <= node.t:
            self.rx += self.rx_at.pop(0)[1]

    def rx_available(self, node: SimNode) -> int:
        self._deliver(node)
        return len(self.rx)

    def rx_read(self, node: SimNode, n: int | None) -> bytes:
        self._deliver(node)
        n = len(self.rx) if n is None else n
        data = bytes(self.rx[:n])
        del self.rx[:n]
        return data

    def wait(self, node: SimNode, dt: float) -> None:
        return None

    def reset(self, node: SimNode) -> None:
        """Deep sleep or reset: the UART's receive FIFO does not survive."""
        self.rx.clear()
        self.rx_at.clear()

    def close(self) -> None:
        return None


class PtyLink:
    """A pty pair: the node's UART is the master side, the gateway opens ``slave_path``."""

    def __init__(self, node: SimNode, gw_id: str, ber: float = 0.0, wall_factor: float = 1.0,
                 max_wait_s: float = 0.5) -> None:
        self.gw_id = gw_id
        self.ber = ber
        self.wall_factor = wall_factor
        self.max_wait_s = max_wait_s
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave, termios.TCSANOW)
        os.set_blocking(self.master, False)
        self.slave_path = os.ttyname(self.slave)
        self.rx = bytearray()
        self.sniffer = _Sniffer()
        self.ack_splitter = framing.PacketSplitter()
        self.awaiting = False

    def node_write(self, node: SimNode, data: bytes) -> None:
        sent = [node.sim.ledger.register_serial_frame(node, node.t, frame, self.gw_id)
                for frame in self.sniffer.frames(data)]
        try:
            os.write(self.master, add_noise(data, self.ber, node.rng_hw))
        except OSError:
            return  # the truth file shows it sent but not delivered
        for idx in sent:
            node.sim.ledger.mark_serial_delivered(node, idx)
        self.awaiting = True

    def _pull(self, node: SimNode) -> None:
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except (BlockingIOError, OSError):
                return
            if not chunk:
                return
            chunk = add_noise(chunk, self.ber, node.rng_hw)
            self.rx += chunk
            for pkt in self.ack_splitter.feed(chunk):
                try:
                    frame = framing.unwrap(pkt)
                except FrameError:
                    continue
                if len(frame) >= 13 and int.from_bytes(frame[1:5], "little") == node.node_id:
                    node.sim.ledger.mark_acked(node, int.from_bytes(frame[9:13], "little"))
                    self.awaiting = False

    def rx_available(self, node: SimNode) -> int:
        self._pull(node)
        return len(self.rx)

    def rx_read(self, node: SimNode, n: int | None) -> bytes:
        self._pull(node)
        n = len(self.rx) if n is None else n
        data = bytes(self.rx[:n])
        del self.rx[:n]
        return data

    def wait(self, node: SimNode, dt: float) -> None:
        """The node waits for an ack: give the real gateway real time to answer."""
        if not self.awaiting or self.rx:
            return
        select.select([self.master], [], [], min(self.max_wait_s, dt * self.wall_factor))

    def reset(self, node: SimNode) -> None:
        """Deep sleep or reset: bytes that arrived meanwhile are lost with the UART FIFO (a
        late ack still tells the ground truth that the gateway had the frame)."""
        self._pull(node)
        self.rx.clear()
        self.awaiting = False

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)
