"""The staging journal: frames of the open batch made durable before the batch closes.

A file next to the database (``outbox.db-staged``), written from its start. Each staging
writes its frames as records after the last ones and fdatasyncs (``synchronous = "full"``);
a batch commit that holds them sets the write position back to the start, with no write at
all. Record: ``length (2, LE) | crc32 of the rest (4, LE) | node id (4) | fcnt (4) | alarm (1)
| records (2) | the frame's encoded SenML records``.

Why not a table in the database: a staging transaction there rewrites the table's pages,
page 1 and the freelist (4-6 KiB a staging with 1 KiB pages), and the batch's delete of
the rows writes them again: more than closing every batch at the staging interval. A
record writes its bytes.

Why overwrite and not append and truncate: the file keeps its largest size, so a staging
writes into blocks the file already has and its fdatasync carries no metadata. An append
that grows the file, and a truncate, make ext4 commit its journal (inode, extent, bitmaps:
~12 KiB a staging at 1 BLE frame/s on an ext4 loop device, three times the record's own
4 KiB block; bench/bench_sd.py).

Why reading records left from earlier batches is harmless, and needs no sync of the reset
nor a record of what a batch covered: a record whose counter the replay marks (committed
with its batch, gateway/outbox/_marks.py) already hold is in a batch, and the reader at start
skips it (gateway/batcher.py ``_recover_staged``). The reader takes every whole record from
the start of the file to the first torn or damaged one, so it sees the records staged since
the last batch, then possibly older ones that the reset left behind (all in batches). A
power cut that tears the last write costs only that write's records, which were not yet
promised.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Final, NamedTuple

_HEAD: Final = struct.Struct("<HI")  # length of what follows the CRC, crc32 of it
_BODY: Final = struct.Struct("<IIBH")  # node id, fcnt, alarm, records


class StagedFrame(NamedTuple):
    node_id: int
    fcnt: int
    alarm: int
    records: int
    frame: bytes  # the frame's SenML records, CBOR-encoded (urbansense.wire.senml.encode_frame)


def encode(frames: list[StagedFrame]) -> bytes:
    out = bytearray()
    for f in frames:
        rest = _BODY.pack(f.node_id, f.fcnt, f.alarm, f.records) + f.frame
        out += _HEAD.pack(len(rest), zlib.crc32(rest)) + rest
    return bytes(out)


def decode(data: bytes) -> tuple[list[StagedFrame], int]:
    """The records up to the first torn or damaged one, and the bytes they span."""
    out: list[StagedFrame] = []
    at = 0
    while at + _HEAD.size <= len(data):
        n, crc = _HEAD.unpack_from(data, at)
        rest = data[at + _HEAD.size: at + _HEAD.size + n]
        if n < _BODY.size or len(rest) != n or zlib.crc32(rest) != crc:
            break
        node_id, fcnt, alarm, records = _BODY.unpack_from(rest)
        out.append(StagedFrame(node_id, fcnt, alarm, records, bytes(rest[_BODY.size:])))
        at += _HEAD.size + n
    return out, at


class StagingJournal:
    """``frames``: what the file held when opened (a previous process's staging, and records
    of batches already committed: the caller tells them apart by their counters)."""

    __slots__ = ("_fd", "_sync", "frames", "path", "size")

    def __init__(self, path: Path, sync: bool) -> None:
        self.path = path
        self._sync = sync
        created = not path.exists()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if created and sync:  # fdatasync keeps the file's data, not its name in the directory
            d = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(d)
            finally:
                os.close(d)
        size = os.fstat(self._fd).st_size
        # size: where the next record goes, after the last whole one (a torn tail is overwritten)
        self.frames, self.size = decode(os.pread(self._fd, size, 0)) if size else ([], 0)

    def append(self, frames: list[StagedFrame]) -> int:
        """Written and (``sync``) on disk when this returns; the bytes written."""
        data = encode(frames)
        n = os.pwrite(self._fd, data, self.size)
        if n != len(data):
            raise OSError(f"short write to {self.path}: {n} of {len(data)} bytes")
        self.size += n
        if self._sync:
            os.fdatasync(self._fd)
        return n

    def clear(self) -> None:
        """The next record goes to the start; what the file holds is in committed batches."""
        self.size = 0

    def close(self) -> None:
        os.close(self._fd)
