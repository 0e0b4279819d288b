"""The gateway's fast paths give exactly what the plain code they replace gives."""

from __future__ import annotations

import hashlib
import hmac
import random
import sqlite3
import subprocess
import sys
import zlib
from pathlib import Path

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.batcher import Batcher
from gateway.config import BatchConfig, HealthConfig
from gateway.flow import Heard, NodeRow
from gateway.health import Health
from gateway.metrics import Metrics
from gateway.outbox import PRIORITY_ORDINARY, SD_PAGE_SIZE, Outbox
from gateway.outbox import _marks as marks_mod
from gateway.registry import Node, Registry
from gateway.replay import ReplayTable
from gateway.verify import Verifier
from tests.test_gw_support import KEYS, frame
from urbansense.wire import senml, senml_reader
from urbansense.wire.protocol import NodeKeys
from urbansense.wire.senml import (
    FrameRecord,
    encode_frame,
    encode_frame_body,
    frame_bytes,
    frame_key,
    frame_records,
    join_frames,
    join_packed,
)

ROOT = Path(__file__).resolve().parents[1]
u32 = st.integers(0, 0xFFFFFFFF)
# Values past what a CBOR head holds too (a bignum-tagged body value passes verify as an int).
value = st.one_of(st.booleans(), st.integers(-(2**70), 2**70), st.integers(-30, 30))
readings = st.dictionaries(st.integers(-5, 40), value, max_size=24)
when = st.one_of(st.floats(0, 2e9), st.just(float("inf")), st.integers(0, 2**40))
frame_record = st.builds(FrameRecord, u32, u32, st.sampled_from([0, 1, 2]), readings, when,
                         st.one_of(st.none(), st.integers(-120, 20)))


@given(fr=frame_record)
def test_encode_frame_writes_the_bytes_cbor2_writes(fr: FrameRecord) -> None:
    records = frame_records(fr)
    whole = cbor2.dumps(records)
    data, n = encode_frame(fr)
    assert n == len(records)
    assert whole.endswith(data) and frame_bytes((data, n)) == len(whole)


@given(frs=st.lists(frame_record, max_size=40))
def test_join_frames_is_encode_pack(frs: list[FrameRecord]) -> None:
    packed = [encode_frame(fr) for fr in frs]
    assert join_frames([d for d, _ in packed], sum(n for _, n in packed)) == senml.encode_pack(frs)


# Frames that share a node block or a second too, so compact packs leave out bn and bt.
close_frame = st.builds(FrameRecord, st.sampled_from([1, 2, 0xFFF, 0x1000, 0x10000123]), u32,
                        st.sampled_from([0, 1, 2]), readings,
                        st.sampled_from([1765000000.0, 1765000000.9, 1765000001.2, 7]),
                        st.one_of(st.none(), st.integers(-120, 20)))


@given(frs=st.lists(st.one_of(frame_record, close_frame), max_size=40))
def test_join_packed_is_the_compact_pack_cbor2_writes(frs: list[FrameRecord]) -> None:
    """The batcher's pack: bn and bt only where they change, the bytes of the dict records."""
    packed = [encode_frame_body(fr) for fr in frs]
    parts = [(frame_key(fr), data) for fr, (data, _) in zip(frs, packed, strict=True)]
    assert join_packed(parts, sum(n for _, n in packed)) == senml.encode_compact(frs)
    assert senml_reader.frames_from_pack(senml.encode_compact(frs)) == senml_reader.frames_from_pack(senml.encode_pack(frs))


@given(key=st.binary(min_size=16, max_size=16), direction=st.sampled_from([0, 1]), fcnt=u32,
       data=st.binary(max_size=80))
def test_precomputed_hmac_states_give_hmac_sha256(key: bytes, direction: int, fcnt: int,
                                                   data: bytes) -> None:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    mic_key = Cipher(algorithms.AES(key), modes.ECB()).encryptor().update(b"\x02" + bytes(15))
    msg = bytes((0x49, direction)) + fcnt.to_bytes(4, "little") + data
    assert NodeKeys(key).mic(direction, fcnt, data) == hmac.digest(mic_key, msg, hashlib.sha256)[:4]


def test_a_better_rssi_merged_after_encoding_reaches_the_pack(tmp_path: Path) -> None:
    """The batcher encodes a frame when it arrives; a repeat heard louder must re-encode it."""
    reg = Registry([Node(1, "parking", NodeKeys(KEYS[1]))])
    m = Metrics()
    replay = ReplayTable()
    ob = Outbox(tmp_path / "o.db", 1 << 20, m, "normal")
    verifier = Verifier(reg, replay, m)
    b = Batcher(BatchConfig(), ob, reg, replay, Health(HealthConfig(), reg, lambda e: None), m)
    f = frame(1, 7)
    for rssi in (-80, -60, -70):
        v = verifier.process(Heard(f, "ble", rssi_dbm=rssi))
        assert v is not None
        b.add(v)
    b.flush()
    (batch,) = ob.peek(0, 10)
    ((node_id, fcnt, values),) = senml_reader.frames_from_pack(batch.payload)
    assert (node_id, fcnt, values["rssi"]) == (1, 7, -90)
    ob.close()


# -- the outbox's marks log ----------------------------------------------------------------


def _latest(rows: dict[int, NodeRow]) -> list[NodeRow]:
    return [rows[n] for n in sorted(rows)]


def test_marks_log_folds_into_nodes_and_every_state_reads_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Node rows ride in the log, folded now and then; what reads back is always the latest."""
    monkeypatch.setattr(marks_mod, "FOLD_MIN_ROWS", 40)
    monkeypatch.setattr(marks_mod, "FOLD_PER_NODE", 1)
    path = tmp_path / "o.db"
    ob = Outbox(path, 1 << 30)
    rng = random.Random(5)
    want: dict[int, NodeRow] = {}
    folds = 0
    for i in range(60):
        rows = [NodeRow(n, i, i % 3, rng.randbytes(8)) for n in rng.sample(range(1, 30), 7)]
        logged = _count(path, "marks")
        ob.commit_batch(b"p%d" % i, 7, PRIORITY_ORDINARY, rows)
        folds += _count(path, "marks") < logged
        want.update((r.node_id, r) for r in rows)
        assert ob.load_nodes() == _latest(want)
    assert folds >= 5, "the log was folded along the way"
    ob.close()
    assert _count(path, "marks") == 0, "a closed file holds every mark in nodes"
    assert Outbox(path, 1 << 30).load_nodes() == _latest(want)


_KILLED = """
import os, signal, sys
from pathlib import Path
from gateway.flow import NodeRow
from gateway.outbox import Outbox
ob = Outbox(Path(sys.argv[1]), 10**7)
for i in range(30):
    ob.commit_batch(b"b%d" % i, 1, 0, [NodeRow(i % 4, 100 + i, i, bytes([i]) * 8)])
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_kill_9_keeps_the_marks_of_the_unfolded_log(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    rc = subprocess.run([sys.executable, "-c", _KILLED, str(path)], cwd=ROOT, timeout=60,
                        check=False).returncode
    assert rc == -9
    assert _count(path, "marks") == 30 and _count(path, "nodes") == 0
    ob = Outbox(path, 10**7)
    assert ob.load_nodes() == [NodeRow(n, 100 + i, i, bytes([i]) * 8)
                               for n, i in ((0, 28), (1, 29), (2, 26), (3, 27))]
    ob.close()


def test_salvage_of_a_corrupt_file_keeps_the_marks_of_its_log(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    ob = Outbox(path, 64 << 20)
    want: dict[int, NodeRow] = {}
    for i in range(120):
        rows = [NodeRow(n, 1000 * n + i, i, (n * i).to_bytes(8, "little")) for n in range(1, 21)]
        ob.commit_batch(bytes(3000), 20, PRIORITY_ORDINARY, rows)
        want.update((r.node_id, r) for r in rows)
    ob._db.close()  # as a power cut would leave it: the log not folded
    assert _count(path, "marks") > 0
    db = sqlite3.connect(path)
    leaves = [p for (p,) in db.execute(
        "SELECT pageno FROM dbstat WHERE name='batches' AND pagetype='leaf' ORDER BY pageno")]
    db.close()
    with path.open("r+b") as f:
        for p in leaves[::3]:
            f.seek((p - 1) * 4096)
            f.write(b"\xee" * 64)
    ob = Outbox(path, 64 << 20)
    assert ob.salvage.moved_to is not None and not ob.salvage.failed
    assert ob.load_nodes() == _latest(want)
    ob.close()


def test_a_file_from_before_the_log_opens_and_its_ids_keep_growing(tmp_path: Path) -> None:
    """AUTOINCREMENT batches, no marks table: ids continue past its counter, marks still load."""
    path = tmp_path / "o.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript("""
        PRAGMA journal_mode=WAL;
        CREATE TABLE batches (id INTEGER PRIMARY KEY AUTOINCREMENT, priority INTEGER NOT NULL,
            frames INTEGER NOT NULL, created_s REAL NOT NULL, crc INTEGER NOT NULL,
            payload BLOB NOT NULL);
        CREATE TABLE nodes (node_id INTEGER PRIMARY KEY, fcnt INTEGER NOT NULL,
            dcnt INTEGER NOT NULL, seen BLOB NOT NULL);
        CREATE TABLE downlinks (node_id INTEGER PRIMARY KEY, commands TEXT NOT NULL);
        INSERT INTO nodes VALUES (3, 77, 2, x'0100000000000000');
    """)
    for _ in range(5):
        db.execute("INSERT INTO batches (priority, frames, created_s, crc, payload) VALUES (0,1,0,?,?)",
                   (zlib.crc32(b"old"), b"old"))
    db.execute("DELETE FROM batches")  # all published: only sqlite_sequence remembers 5
    db.close()
    ob = Outbox(path, 1 << 20, page_size=SD_PAGE_SIZE)
    assert ob._page_size == 4096, "an existing file keeps its page size"
    assert ob.load_nodes() == [NodeRow(3, 77, 2, bytes([1]) + bytes(7))]
    assert ob.commit_batch(b"new", 1, PRIORITY_ORDINARY, [NodeRow(3, 78, 2, bytes(8))]) == 6
    assert ob.load_nodes() == [NodeRow(3, 78, 2, bytes(8))]
    ob.close()


def test_a_lone_frame_commit_writes_two_small_pages(tmp_path: Path) -> None:
    """The SD-card figure of a quiet site: batch leaf + log leaf, no sequence page, no zeroing."""
    m = Metrics()
    ob = Outbox(tmp_path / "o.db", 1 << 30, m, page_size=SD_PAGE_SIZE)
    assert ob._page_size == SD_PAGE_SIZE
    ob.commit_batch(b"x", 1, PRIORITY_ORDINARY, [NodeRow(n, 1, 0, bytes(8)) for n in range(100)])
    last = 0
    sizes = []
    for i in range(30):
        before = m.disk_bytes_written.total()
        if last:
            ob.ack(last)  # the delete rides with this commit, as at a quiet site
        last = ob.commit_batch(bytes(90), 1, PRIORITY_ORDINARY, [NodeRow(i % 100, 2 + i, 0, bytes(8))])
        sizes.append(m.disk_bytes_written.total() - before)
    wal_frame = SD_PAGE_SIZE + 24
    # Two pages a commit; now and then a leaf of the log fills and splits (four or five).
    steady = sizes[5:]
    assert sorted(steady)[len(steady) * 4 // 5] <= 2 * wal_frame, sizes
    assert sum(steady) / len(steady) <= 2.5 * wal_frame, sizes
    ob.close()


def _count(path: Path, table: str) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        db.close()
