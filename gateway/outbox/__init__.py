"""The durable outbox: SQLite in WAL mode, one transaction per batch.

What survives a kill -9 or a power cut is decided here:
- a batch (an encoded SenML pack) is committed together with the replay high-water marks,
  downlink counters and replay windows of the nodes it carries, so after a crash the
  gateway neither forgets a reading it acknowledged nor accepts a frame it already accepted.
  Those node rows are appended, packed, to the ``marks`` log in that transaction; the log is
  folded into the ``nodes`` table once it holds a few times as many rows as there are nodes
  (inside a batch's transaction too) and at close. A batch of 100 frames from 100 nodes would
  otherwise rewrite nearly every page of ``nodes``: 25 KB of SD card for 10 KB of readings;
- a frame that no node will send again (BLE) is made durable within ``batch.durable_ms`` of its
  acceptance, while its batch stays open: ``stage`` writes it (node, counter, its encoded
  records) to the staging journal ``<outbox>-staged`` and fdatasyncs; once the batch that
  finally holds it is committed, the journal is written from its start again (no truncate:
  the file keeps its blocks, so a staging's fdatasync carries no file-system metadata). A
  process that stops in between leaves it there; at start the batcher makes the records
  whose counters the replay marks do not hold a batch, with their marks, before any frame is
  verified (``_staging`` says why this needs neither a write at the reset nor a record of
  what a batch covered);
- ``synchronous=FULL`` fsyncs the WAL at every commit (one fsync per batch, not per reading).
  ``NORMAL`` survives process crashes but may lose the last commits on power loss;
- a batch leaves only after the broker's PUBACK. Its delete rides with the next batch commit,
  or ``flush_acks`` writes it once 256 deletes wait or the oldest waited ``ack_flush_s``: a
  quiet site must not pay a second SD-card commit per batch. A delete lost to a crash costs a
  duplicate publish, which consumers drop on (node, fcnt), never a lost reading;
- the outbox is bounded by ``max_bytes`` of database: each batch counts its payload plus
  SQLite's per-row and page-packing overhead (``stored_bytes``), so tiny batches of a quiet
  site cannot outgrow the configured size. When full the oldest ordinary batches go first,
  alarm batches last, each drop counted. A disk that fills first (SQLITE_FULL) is handled the
  same way, once per commit, before ``OutboxFull`` is raised;
- a file SQLite cannot read is moved aside and what still reads is copied out of it: replay
  marks first (losing them would let captured old frames in again), downlinks, and batches
  whose CRC verifies;
- a pack and a marks-log row are stored deflated when that is smaller (``_deflate``): a full
  pack of 100 frames takes a third of its bytes, so half the pages of a commit;
- the outbox numbers batches itself (no AUTOINCREMENT: its ``sqlite_sequence`` page would be
  one more page written per commit), and the gateway creates new files with 512-byte pages,
  so a lone frame's commit writes two small pages (~1.1 KB), not three of 4 KiB.

The modules, each private, in the order a reader needs them:
- ``_outbox``: ``Outbox``, the commit/ack/peek path in one sitting;
- ``_pending``: the in-memory index of batches waiting for their PUBACK, and eviction's order;
- ``_marks``: the marks log and its fold into ``nodes``;
- ``_sizing``: what a batch costs in the file (``stored_bytes``);
- ``_deflate``: what a row stores of a pack or of node rows;
- ``_staging``: the staging journal of the open batch's BLE frames;
- ``_sqlite``: the schema, the pragmas and the one write transaction;
- ``_salvage``: moving a damaged file aside and copying out of it (start-up only).
Callers import from ``gateway.outbox`` only.
"""

from gateway.outbox._deflate import load_pack
from gateway.outbox._outbox import ACK_FLUSH_COUNT, Outbox, StoredBatch
from gateway.outbox._pending import PRIORITY_ALARM, PRIORITY_ORDINARY
from gateway.outbox._salvage import Salvage
from gateway.outbox._sizing import SD_PAGE_SIZE, stored_bytes
from gateway.outbox._staging import StagedFrame

__all__ = [
    "ACK_FLUSH_COUNT",
    "PRIORITY_ALARM",
    "PRIORITY_ORDINARY",
    "SD_PAGE_SIZE",
    "Outbox",
    "Salvage",
    "StagedFrame",
    "StoredBatch",
    "load_pack",
    "stored_bytes",
]
