"""The staging journal: frames of the open batch made durable before the batch closes.

An append-only file next to the database (``outbox.db-staged``). Each staging appends its
frames as records and fdatasyncs (``synchronous = "full"``); a batch commit that holds them
truncates the file afterwards. Record: ``length (2, LE) | crc32 of the rest (4, LE) | node id
(4) | fcnt (4) | alarm (1) | records (2) | the frame's encoded SenML records``.

Why not a table in the database: a staging transaction there rewrites the table's pages,
page 1 and the freelist (4-6 KiB a staging with 1 KiB pages), and the batch's delete of
the rows writes them again: more than closing every batch at the staging interval. An
append writes the records' bytes.

Why the truncate needs no sync and no record of what a batch covered: a record whose counter
the replay marks (committed with its batch, gateway/outbox/_marks.py) already hold is in a
batch, and the reader at start skips it (gateway/batcher.py ``_recover_staged``). So a power
cut that loses the truncate, or tears the last append (its CRC fails; reading stops there),
costs nothing that was promised.
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
    """``frames``: what the file held when opened (a previous process's staging)."""

    __slots__ = ("_fd", "_sync", "frames", "path", "size")

    def __init__(self, path: Path, sync: bool) -> None:
        self.path = path
        self._sync = sync
        created = not path.exists()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        if created and sync:  # fdatasync keeps the file's data, not its name in the directory
            d = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(d)
            finally:
                os.close(d)
        size = os.fstat(self._fd).st_size
        self.frames, self.size = decode(os.pread(self._fd, size, 0)) if size else ([], 0)
        if self.size != size:  # a torn tail: appends go after the last whole record
            os.ftruncate(self._fd, self.size)

    def append(self, frames: list[StagedFrame]) -> int:
        """Appended and (``sync``) on disk when this returns; the bytes written."""
        data = encode(frames)
        os.write(self._fd, data)
        self.size += len(data)
        if self._sync:
            os.fdatasync(self._fd)
        return len(data)

    def clear(self) -> None:
        if self.size:
            os.ftruncate(self._fd, 0)
            self.size = 0

    def close(self) -> None:
        os.close(self._fd)
