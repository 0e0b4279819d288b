"""What the outbox stores of a pack and of a marks-log row: deflated (RFC 1950/1951) when smaller.

Why: SD cards wear out by writes, and every byte of a row is written twice (WAL, then its
checkpoint). A full pack of 100 SenML frames deflates about 2.9x (the same names, units and
base times, frame after frame), a marks-log row about 4.6x (node ids, counters and windows
that differ in few bytes), so a full batch writes half the pages. Below ``MIN_DEFLATE_BYTES``
nothing is deflated: such a row shares a leaf page, which a commit writes whole anyway, and
zlib's set-up alone costs ~70,000 instructions (a 100-byte pack; 6 KB: ~1,000,000 to deflate
and inflate), which a quiet site would pay per frame for no byte less on the card.

How a reader tells them apart, without a schema change (old files read as before):
- a batch row's ``crc`` column holds the CRC-32 of the stored bytes, plus ``DEFLATED``
  (bit 32, above any CRC-32) when they are deflated;
- a marks-log row is whole ``MARK``s, so a length that is a multiple of ``MARK.size``; a
  deflated row has any other length (a zero byte is appended when it would not, which the
  inflater leaves unread).

Level 1 with a 4 KiB window: 2.92x on the benchmark's full packs, as with zlib's 32 KiB (the
repeats are a frame apart), for a smaller state to set up; level 6 gives 3.24x for half as
many instructions again, and no fewer pages written (bench/bench_sd.py). Inflating runs once
per publish, on ``peek``.
"""

from __future__ import annotations

import zlib
from typing import Final

_LEVEL: Final = 1
_WBITS: Final = 12  # a 4 KiB window: the CMF byte is 0x48
_MEM_LEVEL: Final = 5  # zlib's state for that window: 17 KiB, allocated per call
DEFLATED: Final = 1 << 32
MIN_DEFLATE_BYTES: Final = 1024  # below: a few frames, a page or two (gateway/outbox/_sizing.py)


def _deflate(data: bytes) -> bytes:
    co = zlib.compressobj(_LEVEL, zlib.DEFLATED, _WBITS, _MEM_LEVEL)
    return co.compress(data) + co.flush()


def _inflate(data: bytes) -> bytes:
    """Raises ``zlib.error`` on a damaged stream (a truncated one included)."""
    d = zlib.decompressobj(_WBITS)
    out = d.decompress(data)
    if not d.eof:
        raise zlib.error("truncated deflate stream")
    return out


def store_pack(pack: bytes) -> tuple[bytes, int]:
    """The bytes to store for a SenML pack, deflated if that is smaller, and its ``crc`` column."""
    z = _deflate(pack) if len(pack) >= MIN_DEFLATE_BYTES else pack
    if len(z) < len(pack):
        return z, zlib.crc32(z) | DEFLATED
    return pack, zlib.crc32(pack)


def crc_ok(stored: object, crc: object) -> bool:
    """Whether a row's stored bytes match its ``crc`` column."""
    return isinstance(stored, bytes) and type(crc) is int and zlib.crc32(stored) == crc & ~DEFLATED


def load_pack(stored: bytes, crc: int) -> bytes | None:
    """The pack a stored row holds; None if the row fails its CRC or does not inflate."""
    if not crc_ok(stored, crc):
        return None
    if not crc & DEFLATED:
        return stored
    try:
        return _inflate(stored)
    except zlib.error:
        return None


def store_marks(rows: bytes, row_size: int) -> bytes:
    """The bytes to store for packed marks (whole rows of ``row_size``): deflated if smaller."""
    if len(rows) < MIN_DEFLATE_BYTES:
        return rows
    z = _deflate(rows)
    if len(z) % row_size == 0:
        z += b"\0"
    return z if len(z) < len(rows) else rows


def load_marks(stored: bytes, row_size: int) -> bytes:
    """The packed marks a stored row holds. Raises ``zlib.error`` on a damaged deflated row."""
    if len(stored) % row_size == 0:
        return stored
    return _inflate(stored)
