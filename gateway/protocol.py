"""Protocol v1, gateway side: verify and decode uplinks, encode acks. Sans-I/O.

The hot path of the gateway: per-node key material (an ECB encryptor context and the
HMAC key) is built once and reused, so a frame costs one HMAC and one short AES call.
docs/PROTOCOL.md is the spec; tests/vectors/ pins it.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Final

import cbor2
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from gateway.errors import FrameError

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
MAX_FRAME_LEN: Final = 64
BLE_MAX_FRAME_LEN: Final = 27
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


class NodeKeys:
    """Derived key material for one node: K_enc = AES_K(01|0^15), K_mic = AES_K(02|0^15)."""

    __slots__ = ("_ecb", "mic_key")

    def __init__(self, root_key: bytes) -> None:
        if len(root_key) != 16:
            raise ValueError("node key must be 16 bytes")
        root = Cipher(algorithms.AES(root_key), modes.ECB()).encryptor()
        enc_key = root.update(b"\x01" + bytes(15))
        self.mic_key: bytes = root.update(b"\x02" + bytes(15))
        self._ecb = Cipher(algorithms.AES(enc_key), modes.ECB()).encryptor()

    def __repr__(self) -> str:  # never print key material
        return "NodeKeys(<redacted>)"

    def mic(self, direction: int, fcnt: int, frame_wo_mic: bytes) -> bytes:
        msg = b"\x49" + bytes((direction,)) + fcnt.to_bytes(4, "little") + frame_wo_mic
        return hmac.digest(self.mic_key, msg, hashlib.sha256)[:MIC_LEN]

    def ctr(self, direction: int, node_id: int, fcnt: int, dcnt: int, data: bytes) -> bytes:
        if not data:
            return b""
        prefix = (
            bytes((1, direction))
            + node_id.to_bytes(4, "little")
            + fcnt.to_bytes(4, "little")
            + dcnt.to_bytes(4, "little")
            + b"\x00"
        )
        nblocks = (len(data) + 15) // 16
        stream = self._ecb.update(b"".join(prefix + bytes((i,)) for i in range(1, nblocks + 1)))
        n = len(data)
        return (
            int.from_bytes(data, "big") ^ int.from_bytes(stream[:n], "big")
        ).to_bytes(n, "big")


@dataclass(slots=True, frozen=True)
class Header:
    version: int
    ftype: int
    node_id: int
    fcnt16: int


@dataclass(slots=True, frozen=True)
class Uplink:
    """A verified, decrypted uplink."""

    node_id: int
    fcnt: int  # full 32-bit counter
    ftype: int
    readings: dict[int, int | bool]
    frame: bytes


def parse_header(frame: bytes) -> Header:
    """Cheap checks before any key is looked up (unknown nodes cost no crypto)."""
    if len(frame) < MIN_UPLINK_LEN:
        raise FrameError("too_short", f"{len(frame)} bytes")
    if len(frame) > MAX_FRAME_LEN:
        raise FrameError("too_long", f"{len(frame)} bytes")
    hdr = frame[0]
    version = hdr >> 4
    if version != VERSION:
        raise FrameError("unknown_version", str(version))
    ftype = hdr & 0x0F
    if ftype not in UPLINK_TYPES:
        raise FrameError("unknown_type", str(ftype))
    return Header(
        version,
        ftype,
        int.from_bytes(frame[1:5], "little"),
        frame[5] | (frame[6] << 8),
    )


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
    end = len(frame) - MIC_LEN
    signed = frame[:end]
    mic = frame[end:]
    fcnt = reconstruct_fcnt(last_fcnt, header.fcnt16)
    for _ in range(MAX_ROLLOVERS + 1):
        if fcnt > 0xFFFFFFFF:
            break
        if hmac.compare_digest(keys.mic(DIR_UP, fcnt, signed), mic):
            break
        fcnt += 0x10000
    else:
        fcnt = -1
    if not 0 <= fcnt <= 0xFFFFFFFF:
        raise FrameError("bad_mic", f"node {header.node_id:08x}")
    body = keys.ctr(DIR_UP, header.node_id, fcnt, 0, frame[UP_HDR_LEN:end])
    try:
        readings = cbor2.loads(body)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise FrameError("malformed_body", type(exc).__name__) from None
    if not isinstance(readings, dict) or not all(
        type(k) is int and type(v) in (int, bool) for k, v in readings.items()
    ):
        raise FrameError("malformed_body", "not a map of int -> int|bool")
    return Uplink(header.node_id, fcnt, header.ftype, readings, frame)


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
