"""Serial encapsulation: COBS with a 0x00 delimiter around frame + CRC-16/CCITT-FALSE.

A stream splitter that survives line noise: it resynchronises on the next delimiter and
bounds what it buffers, so no byte sequence can grow memory or raise out of it.
"""

from __future__ import annotations

import binascii
from typing import Final

from urbansense.wire.errors import FrameError

MAX_PACKET_LEN: Final = 256  # COBS overhead + CRC + the longest frame, with margin


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF); check value 0x29B1."""
    return binascii.crc_hqx(data, 0xFFFF)


def cobs_encode(data: bytes) -> bytes:
    """Consistent Overhead Byte Stuffing: split at zeros and every 254 non-zero bytes."""
    out = bytearray()
    start = 0
    n = len(data)
    while True:
        zero = data.find(0, start, start + 254)
        if zero == -1:
            end = min(start + 254, n)
            out.append(end - start + 1)
            out += data[start:end]
            if end == n and end - start < 254:
                return bytes(out)
            start = end  # a full 254-byte block carries no implied zero
            if start == n:
                out.append(1)
                return bytes(out)
        else:
            out.append(zero - start + 1)
            out += data[start:zero]
            start = zero + 1


def cobs_decode(packet: bytes) -> bytes:
    out = bytearray()
    i = 0
    n = len(packet)
    while i < n:
        code = packet[i]
        if code == 0:
            raise FrameError("bad_cobs", "zero byte inside packet")
        end = i + code
        if end > n:
            raise FrameError("bad_cobs", "truncated block")
        out += packet[i + 1 : end]
        i = end
        if code < 0xFF and i < n:
            out.append(0)
    return bytes(out)


def wrap(frame: bytes) -> bytes:
    crc = crc16(frame)
    return cobs_encode(frame + crc.to_bytes(2, "big")) + b"\x00"


def unwrap(packet: bytes) -> bytes:
    raw = cobs_decode(packet)
    if len(raw) < 3:
        raise FrameError("too_short", f"{len(raw)} bytes on serial")
    if crc16(raw[:-2]) != int.from_bytes(raw[-2:], "big"):
        raise FrameError("bad_crc")
    return raw[:-2]


class PacketSplitter:
    """Feed raw serial bytes; get delimiter-free packets. Overlong packets are dropped."""

    __slots__ = ("_buf", "_discarding", "overruns")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._discarding = False
        self.overruns = 0

    def feed(self, data: bytes) -> list[bytes]:
        packets: list[bytes] = []
        start = 0
        while True:
            zero = data.find(0, start)
            if zero == -1:
                self._append(data[start:])
                return packets
            self._append(data[start:zero])
            if not self._discarding and self._buf:
                packets.append(bytes(self._buf))
            self._buf.clear()
            self._discarding = False
            start = zero + 1

    def _append(self, chunk: bytes) -> None:
        if self._discarding or not chunk:
            return
        if len(self._buf) + len(chunk) > MAX_PACKET_LEN:
            self._buf.clear()
            self._discarding = True
            self.overruns += 1
            return
        self._buf += chunk
