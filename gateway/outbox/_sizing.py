"""What a batch costs in the database file: the number ``max_bytes`` bounds.

Counting payload alone would let the tiny batches of a quiet site outgrow the configured size:
a leaf page holds whole cells only, and every row carries a header and its other columns.
"""

from __future__ import annotations

from typing import Final

# Record header and the non-payload columns (priority, frames, created_s, crc), then the cell's
# payload-size and rowid varints: measured within 1 % of the file for 20 B .. 16 KiB payloads.
_RECORD_OVERHEAD: Final = 24
_CELL_HEADER: Final = 5
# Pages of a new file the gateway creates: a commit writes whole pages, and most of a large
# page would be empty. 512 B (SQLite's smallest) against 1 KiB, bench/bench_sd.py on an ext4
# loop device: a lone frame's commit 1.1 KB of WAL instead of 2.1 (5.4 KB a reading at the
# device at 1 serial frame/s instead of 6.4: fewer 4 KiB blocks rewritten per fdatasync),
# 108 B a reading at full batches instead of 142; the same instructions per reading.
SD_PAGE_SIZE: Final = 512


def stored_bytes(payload_len: int, page_size: int = 4096) -> int:
    """Estimated bytes a batch row takes in the file (SQLite file format, "B-tree pages").

    A leaf page holds whole cells only, so a 1 KiB row costs a third of a page; a row above
    the local limit keeps a head in its leaf and spills the rest into whole overflow pages.
    """
    u = page_size
    p = payload_len + _RECORD_OVERHEAD
    max_local = u - 35
    if p <= max_local:
        per_page = (u - 8) // (p + _CELL_HEADER + 2)  # +2: the cell pointer
        return -(-u // per_page)
    min_local = (u - 12) * 32 // 255 - 23
    local = min_local + (p - min_local) % (u - 4)
    if local > max_local:
        local = min_local
    overflow_pages = -(-(p - local) // (u - 4))
    per_page = (u - 8) // (local + 4 + _CELL_HEADER + 2)  # +4: the first overflow page's number
    return overflow_pages * u + -(-u // per_page)
