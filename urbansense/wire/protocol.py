"""Protocol v1, gateway side: verify and decode uplinks, encode acks. Sans-I/O.

The hot path of the gateway: per-node key material (an ECB encryptor context and the keyed
HMAC states) is built once and reused, so a frame costs two SHA-256 blocks and one short AES
call. docs/PROTOCOL.md is the spec; tests/vectors/ pins it.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import Final

import cbor2
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from urbansense.compat import DATACLASS_SLOTS
from urbansense.wire.body import decode_body
from urbansense.wire.errors import FrameError

VERSION: Final = 1
T_REPORT: Final = 0
T_STATUS: Final = 1
T_ALARM: Final = 2
T_ACK: Final = 8
UPLINK_TYPES: Final = frozenset({T_REPORT, T_STATUS, T_ALARM})
TYPE_NAMES: Final = {T_REPORT: "report", T_STATUS: "status", T_ALARM: "alarm", T_ACK: "ack"}

DIR_UP: Final = 0
DIR_DOWN: Final = 1
UP_HDR_LEN: Final = 7
DOWN_HDR_LEN: Final = 13
MIC_LEN: Final = 4
MIN_UPLINK_LEN: Final = UP_HDR_LEN + 1 + MIC_LEN  # the smallest body is an empty map
SERIAL_MAX_FRAME: Final = 64
BLE_MAX_FRAME: Final = 27
# A MIC failure at the nearest counter is retried this many 2^16 rollovers ahead, so a
# node unheard for up to 3 x 65536 frames is still recognised (LoRaWAN infers 16 bits too).
MAX_ROLLOVERS: Final = 3

# Every reason a frame can be rejected, each a metrics label.
REASONS: Final = (
    "bad_cobs",
    "bad_crc",
    "too_short",
    "too_long",
    "unknown_version",
    "unknown_type",
    "unknown_node",
    "bad_mic",
    "replay",
    "malformed_body",
)


_SHA256_BLOCK: Final = 64
_MIC_HEAD: Final = struct.Struct("<BBI")  # 0x49, dir, FCnt or DCnt (section 2.4)
_CTR_BLOCK: Final = struct.Struct("<BBIIIBB")  # A_i = 01, dir, node id, FCnt, DCnt, 00, i (2.3)
_UP_IDS: Final = struct.Struct("<IH")  # node id, fcnt16 (section 2)


class NodeKeys:
    """Derived key material for one node: K_enc = AES_K(01|0^15), K_mic = AES_K(02|0^15)."""

    __slots__ = ("_ecb", "_inner", "_outer")

    def __init__(self, root_key: bytes) -> None:
        if len(root_key) != 16:
            raise ValueError("node key must be 16 bytes")
        root = Cipher(algorithms.AES(root_key), modes.ECB()).encryptor()
        enc_key = root.update(b"\x01" + bytes(15))
        mic_key = root.update(b"\x02" + bytes(15)).ljust(_SHA256_BLOCK, b"\x00")
        self._ecb = Cipher(algorithms.AES(enc_key), modes.ECB()).encryptor()
        # HMAC's keyed inner and outer states, hashed once (RFC 2104 section 4): a MIC then
        # costs two SHA-256 blocks and no key setup instead of four (about 3x faster).
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in mic_key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in mic_key))

    def __repr__(self) -> str:  # never print key material
        return "NodeKeys(<redacted>)"

    def mic(self, direction: int, fcnt: int, frame_wo_mic: bytes) -> bytes:
        """HMAC-SHA256(K_mic, 49 || dir || counter || frame)[:4], from the precomputed states."""
        inner = self._inner.copy()
        inner.update(_MIC_HEAD.pack(0x49, direction, fcnt))
        inner.update(frame_wo_mic)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:MIC_LEN]

    def ctr(self, direction: int, node_id: int, fcnt: int, dcnt: int, data: bytes) -> bytes:
        if not data:
            return b""
        n = len(data)
        if n <= 16:  # every BLE body: one block, no join
            blocks = _CTR_BLOCK.pack(1, direction, node_id, fcnt, dcnt, 0, 1)
        else:
            blocks = b"".join(_CTR_BLOCK.pack(1, direction, node_id, fcnt, dcnt, 0, i)
                              for i in range(1, (n + 15) // 16 + 1))
        stream = self._ecb.update(blocks)
        return (
            int.from_bytes(data, "big") ^ int.from_bytes(stream[:n], "big")
        ).to_bytes(n, "big")


@dataclass(frozen=True, **DATACLASS_SLOTS)
class Header:
    version: int
    ftype: int
    node_id: int
    fcnt16: int


@dataclass(frozen=True, **DATACLASS_SLOTS)
class Uplink:
    """A verified, decrypted uplink."""

    node_id: int
    fcnt: int  # full 32-bit counter
    ftype: int
    readings: dict[int, int | bool]
    frame: bytes


def parse_header(frame: bytes) -> Header:
    """Cheap checks before any key is looked up (unknown nodes cost no crypto)."""
    ftype, node_id, fcnt16 = header_fields(frame)
    return Header(VERSION, ftype, node_id, fcnt16)


def header_fields(frame: bytes) -> tuple[int, int, int]:
    """(frame type, node id, fcnt16) after parse_header's checks; the verify stage's form
    (no Header object per frame)."""
    n = len(frame)
    if n < MIN_UPLINK_LEN:
        raise FrameError("too_short", f"{n} bytes")
    if n > SERIAL_MAX_FRAME:
        raise FrameError("too_long", f"{n} bytes")
    hdr = frame[0]
    version = hdr >> 4
    if version != VERSION:
        raise FrameError("unknown_version", str(version))
    ftype = hdr & 0x0F
    if ftype not in UPLINK_TYPES:
        raise FrameError("unknown_type", str(ftype))
    node_id, fcnt16 = _UP_IDS.unpack_from(frame, 1)
    return ftype, node_id, fcnt16


def reconstruct_fcnt(last_fcnt: int | None, fcnt16: int) -> int:
    """Nearest 32-bit counter to ``last_fcnt`` with these low 16 bits (may be <= last)."""
    if last_fcnt is None:
        return fcnt16
    delta = (fcnt16 - last_fcnt) & 0xFFFF
    if delta >= 0x8000:
        delta -= 0x10000
    fcnt = last_fcnt + delta
    return fcnt if fcnt >= 0 else fcnt16


def verify_uplink(
    keys: NodeKeys, frame: bytes, header: Header, last_fcnt: int | None
) -> Uplink:
    """Check the MIC (constant time), decrypt and decode the body.

    Authenticity only: whether the counter is fresh is the replay stage's decision.
    """
    fcnt, readings = open_uplink(keys, frame, header.node_id, header.fcnt16, last_fcnt)
    return Uplink(header.node_id, fcnt, header.ftype, readings, frame)


def open_uplink(
    keys: NodeKeys, frame: bytes, node_id: int, fcnt16: int, last_fcnt: int | None
) -> tuple[int, dict[int, int | bool]]:
    """verify_uplink's work, giving (full counter, readings): the verify stage's form."""
    end = len(frame) - MIC_LEN
    signed = frame[:end]
    mic = frame[end:]
    fcnt = reconstruct_fcnt(last_fcnt, fcnt16)
    for _ in range(MAX_ROLLOVERS + 1):
        if fcnt > 0xFFFFFFFF:
            break
        if hmac.compare_digest(keys.mic(DIR_UP, fcnt, signed), mic):
            break
        fcnt += 0x10000
    else:
        fcnt = -1
    if not 0 <= fcnt <= 0xFFFFFFFF:
        raise FrameError("bad_mic", f"node {node_id:08x}")
    return fcnt, decode_body(keys.ctr(DIR_UP, node_id, fcnt, 0, frame[UP_HDR_LEN:end]))


def encode_ack(
    keys: NodeKeys,
    node_id: int,
    dcnt: int,
    acked_fcnt: int,
    commands: dict[int, object] | None = None,
) -> bytes:
    """Gateway -> node acknowledgement, optionally carrying downlink commands."""
    body = cbor2.dumps(commands, canonical=True) if commands else b""
    head = (
        bytes(((VERSION << 4) | T_ACK,))
        + node_id.to_bytes(4, "little")
        + dcnt.to_bytes(4, "little")
        + acked_fcnt.to_bytes(4, "little")
    )
    frame = head + keys.ctr(DIR_DOWN, node_id, acked_fcnt, dcnt, body)
    return frame + keys.mic(DIR_DOWN, dcnt, frame)
