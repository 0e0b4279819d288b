"""Batch stage: accepted frames -> SenML-CBOR packs -> one outbox commit each -> serial acks.

A pack closes at ``max_records`` frames, before it would pass ``max_bytes``, when its oldest
frame is ``max_age_s`` old, or ``ack_max_delay_ms`` after a frame that waits for a serial ack.
Acks are written only after the commit returns: an acked frame is on disk.

A frame no node will send again (BLE gets no ack) is staged: ``durable_ms`` after the first
such frame of the open batch not yet on disk, those frames are written (``Outbox.stage``)
and the batch stays open. So the loss window of a power cut is ``durable_ms``, not
``max_age_s``, and packs stay large. Frames a stopped process left staged become the first
batch of the next start; those of a batch whose commit failed open the next batch.

Downlink commands ride with the acks (gateway/downlinks.py decides which, and when a node has
applied them); what a batch changes in them is committed with it.

The deadlines are kept by one event-loop timer (``_arm``), set when a deadline appears (at
most three times a batch: the batch opens, its first frame waiting for an ack, its first
frame to stage), never per frame: frames may be added from the batch task or synchronously
from a transport's callback (gateway/ingest.py), and a timer per frame cost more than the
frame at a street's rates (issue 16).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Final

from gateway.config import BatchConfig
from gateway.dedup import DedupIndex
from gateway.downlinks import Downlinks
from gateway.errors import OutboxFull
from gateway.flow import Accepted, Duplicate, NodeRow, Verdict
from gateway.health import Health
from gateway.metrics import Metrics
from gateway.outbox import PRIORITY_ALARM, PRIORITY_ORDINARY, Outbox, StagedFrame
from gateway.ratelog import RateLimitedLog
from gateway.registry import Registry
from gateway.replay import Freshness, NodeState, ReplayTable
from urbansense.wire.protocol import encode_ack
from urbansense.wire.senml import encode_frame_body, frame_head, frame_key, join_frames, join_packed

_log = logging.getLogger(__name__)

_ACK_TRANSPORT: Final = "serial"  # the only transport that carries acks (PROTOCOL.md section 1)
# Entries of batches the outbox dropped, tolerated in the frames-out ledger before a sweep:
# proportional, so a sweep (O(outbox depth)) comes once per depth/8 commits at most.
_LEDGER_SLACK_MIN: Final = 64
_LEDGER_SLACK_DIV: Final = 8
_RETRY_S: Final = 1.0  # after a bug in a timed close or stage: not a busy loop of the same bug


class Batcher:
    def __init__(
        self,
        cfg: BatchConfig,
        outbox: Outbox,
        registry: Registry,
        replay: ReplayTable,
        health: Health,
        metrics: Metrics,
        downlinks: Downlinks | None = None,
    ) -> None:
        self.cfg = cfg
        self.outbox = outbox
        self.registry = registry
        self.replay = replay
        self.health = health
        self.metrics = metrics
        self._faults = RateLimitedLog(_log)
        self._open: list[Accepted] = []
        self._index = DedupIndex()
        self._bytes = 1
        self._last_key: tuple[int, float] | None = None  # frame_key of the open pack's last frame
        self._opened_s = 0.0
        self._ack_deadline_s: float | None = None
        # None: downlinks whose acks go nowhere (benchmarks, tests of the batcher alone).
        self.downlinks = downlinks or Downlinks(outbox, registry, lambda applied: None, metrics)
        self._stage_deadline_s: float | None = None
        self._staged_upto = 0  # frames of the open batch before this index were staged (or wait for an ack)
        self._staged = False  # the staging journal holds frames of the open batch
        # The deadline timer: armed once run() gave the batcher its loop (tests of the batcher
        # alone tick by hand). A bug in a timed close reaches on_error (the gateway counts it
        # as a restart of the batch stage), not the loop's exception handler.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.on_error: Callable[[Exception], None] = self._log_error
        # The recovered frames' batch while its commit has not succeeded: (pack, frames,
        # priority, counters per node); retried before each batch's commit.
        self._recovering: tuple[bytes, int, int, dict[int, list[int]]] | None = None
        self._recover_staged()

    def _recover_staged(self) -> None:
        """Frames a process staged and stopped before their batch closed: those whose
        counters the replay marks do not hold (the others are in a batch) become one batch
        now, with their marks, before any frame is verified."""
        fresh: list[StagedFrame] = []
        for s in self.outbox.load_staged():
            verdict = self.replay.get(s.node_id).admit(s.fcnt)  # verify judges by these from now on
            if verdict is Freshness.NEW or verdict is Freshness.LATE:
                fresh.append(s)
        if not fresh:
            self.outbox.clear_staged()
            return
        payload = join_frames([s.frame for s in fresh], sum(s.records for s in fresh))
        priority = PRIORITY_ALARM if any(s.alarm for s in fresh) else PRIORITY_ORDINARY
        fcnts: dict[int, list[int]] = {}
        for s in fresh:
            fcnts.setdefault(s.node_id, []).append(s.fcnt)
        self._recovering = (payload, len(fresh), priority, fcnts)
        self._commit_recovered(unstage=True)

    def _commit_recovered(self, unstage: bool) -> bool:
        """Commit the recovered frames' batch if it waits; False if that failed: the frames
        stay in the journal (their marks hold in memory), which no commit may clear until
        they are committed (a later staging would write over them)."""
        if self._recovering is None:
            return True
        payload, frames, priority, fcnts = self._recovering
        advanced, rows = self._advance(fcnts)
        try:
            self.outbox.commit_batch(payload, frames, priority, rows, unstage=unstage)
        except Exception as exc:
            _log.error("event=staged_frames_not_recovered frames=%d error=%r", frames, exc)
            return False
        for st, mark, seen in advanced:
            st.committed, st.committed_seen = mark, seen
        self._recovering = None
        _log.warning("event=staged_frames_recovered frames=%d", frames)
        return True

    def _advance(self, fcnts: dict[int, list[int]]) -> tuple[list[tuple[NodeState, int, int]], list[NodeRow]]:
        """The committed marks once these counters are on disk (applied by the caller after
        the write), and the node rows that say so."""
        advanced: list[tuple[NodeState, int, int]] = []
        rows: list[NodeRow] = []
        for node_id, fs in fcnts.items():
            st = self.replay.get(node_id)
            mark, seen = st.commit(fs)
            assert mark is not None  # fs is not empty
            advanced.append((st, mark, seen))
            rows.append(st.row(node_id, mark, seen, st.dcnt))
        return advanced, rows


    # -- the stage ----------------------------------------------------------------------

    def close_deadline_s(self) -> float | None:
        """Monotonic time at which the open batch must close."""
        if not self._open:
            return None
        age_deadline = self._opened_s + self.cfg.max_age_s
        if self._ack_deadline_s is not None:
            return min(age_deadline, self._ack_deadline_s)
        return age_deadline

    def deadline_s(self) -> float | None:
        """Monotonic time of the next thing to do: close the batch, or stage frames of it."""
        close = self.close_deadline_s()
        if close is None or self._stage_deadline_s is None:
            return close
        return min(close, self._stage_deadline_s)

    def add(self, v: Verdict) -> None:
        if isinstance(v, Duplicate):
            self._duplicate(v)
            return
        if not self._index.add(v):
            return
        # Encoded once, here: the size decides where the pack closes, the bytes go into it.
        v.packed = packed = encode_frame_body(v.record)
        key = frame_key(v.record)
        size = len(frame_head(key, self._last_key)) + len(packed[0])
        if self._open and self._bytes + size > self.cfg.max_bytes:
            self.flush()
            self._index.add(v)  # flush cleared the index; v opens the next batch
            size = len(frame_head(key, None)) + len(packed[0])
        self._last_key = key
        new_deadline = not self._open
        if new_deadline:
            self._opened_s = time.monotonic()
        self._open.append(v)
        self._bytes += size
        if v.replies:
            if self._ack_deadline_s is None:
                self._ack_deadline_s = time.monotonic() + self.cfg.ack_max_delay_ms / 1000
                new_deadline = True
        elif self._stage_deadline_s is None:
            self._stage_deadline_s = time.monotonic() + self.cfg.durable_ms / 1000
            new_deadline = True
        if len(self._open) >= self.cfg.max_records:
            self.flush()
        elif new_deadline:
            self._arm()

    def _duplicate(self, d: Duplicate) -> None:
        if self._index.merge(d):
            if d.reply is not None and self._ack_deadline_s is None:
                self._ack_deadline_s = time.monotonic() + self.cfg.ack_max_delay_ms / 1000
                self._arm()
            return
        st = self.replay.peek(d.node_id)
        node = self.registry.get(d.node_id)
        if d.reply is None or st is None or node is None:
            return
        if not st.is_committed(d.fcnt):
            return  # accepted but not yet on disk (still queued): never ack what is not
        # A cached ack again; after a restart (no cache) a new one with the pending commands:
        # every ack at or above a set's sent DCnt must carry it (gateway/downlinks.py).
        ack = st.acks.get(d.fcnt) or encode_ack(
            node.keys, d.node_id, st.dcnt, d.fcnt, self.downlinks.commands_for(d.node_id))
        self._reply(d.reply, ack)

    def tick(self, now: float | None = None) -> None:
        """Close or stage what is due at ``now`` (default: the monotonic clock)."""
        if now is None:
            now = time.monotonic()
        close = self.close_deadline_s()
        if close is not None and now >= close:
            self.flush()
        elif self._stage_deadline_s is not None and now >= self._stage_deadline_s:
            self.stage()

    def stage(self) -> None:
        """Write the open batch's frames that wait for no ack and are not on disk yet; the
        batch stays open. A failure is counted and logged: those frames then wait for their
        batch's commit, as without staging."""
        self._stage_deadline_s = None
        todo = [acc for acc in self._open[self._staged_upto:] if not acc.replies]
        self._staged_upto = len(self._open)
        if not todo:
            return
        frames: list[StagedFrame] = []
        for acc in todo:
            if acc.packed is None:
                acc.packed = encode_frame_body(acc.record)
            body, n = acc.packed
            lone = frame_head(frame_key(acc.record), None) + body  # staged frames stand alone
            frames.append(StagedFrame(acc.record.node_id, acc.record.fcnt, int(acc.alarm), n, lone))
        try:
            self.outbox.stage(frames)
            self._staged = True
        except Exception as exc:
            self._faults.log(f"stage/{type(exc).__name__}", "event=outbox_stage_failed frames=%d error=%r",
                             len(frames), exc)

    def flush(self) -> None:
        """Close the open batch: one commit, then the acks."""
        batch = self._open
        if not batch:
            return
        self._open = []
        self._index.clear()
        self._bytes = 1
        self._last_key = None
        self._ack_deadline_s = None
        self._stage_deadline_s = None
        staged_upto, self._staged_upto = self._staged_upto, 0
        unstage, self._staged = self._staged, False

        # One pass over the frames: the pack's bytes, counters per node, frames per transport.
        parts: list[tuple[tuple[int, float], bytes]] = []
        records = 0
        alarm = False
        fcnts: dict[int, list[int]] = {}
        by_transport: dict[str, int] = {}
        waiting: list[Accepted] = []  # frames a serial node waits to see acked
        for acc in batch:
            rec = acc.record
            data, n = acc.packed or encode_frame_body(rec)  # None: a better RSSI merged in
            parts.append((frame_key(rec), data))
            records += n
            alarm = alarm or acc.alarm
            fs = fcnts.get(rec.node_id)
            if fs is None:
                fcnts[rec.node_id] = [rec.fcnt]
            else:
                fs.append(rec.fcnt)
            by_transport[rec.transport] = by_transport.get(rec.transport, 0) + 1
            if acc.replies:
                waiting.append(acc)
        payload = join_packed(parts, records)
        priority = PRIORITY_ALARM if alarm else PRIORITY_ORDINARY
        # Allocate downlink counters before the commit so they are persisted with it; the
        # frames' dcnt readings first, so a set the node confirms is not sent again.
        plan = self.downlinks.plan()
        for acc in batch:
            plan.report(acc.record.node_id, acc.record.readings)
        acks: list[tuple[Accepted, bytes]] = []
        for acc in waiting:
            node_id = acc.record.node_id
            node = self.registry.get(node_id)
            if node is None:
                continue
            st = self.replay.get(node_id)
            st.dcnt += 1
            cmds = plan.for_ack(node_id, st.dcnt)
            acks.append((acc, encode_ack(node.keys, node_id, st.dcnt, acc.record.fcnt, cmds)))
        recovered = self._commit_recovered(unstage=False)  # before this batch's marks
        advanced, rows = self._advance(fcnts)  # applied once the commit returns
        try:
            batch_id = self.outbox.commit_batch(payload, len(batch), priority, rows, plan.done,
                                                unstage and recovered)
        except Exception as exc:
            # Disk full (after the outbox evicted what it could) or an I/O error: nothing was
            # acked, so serial nodes keep these frames and retransmit; BLE frames not staged
            # are lost to this gateway, counted; staged ones open the next batch (_reopen).
            # Roll the in-memory marks back to what is on disk.
            staged = [acc for acc in batch[:staged_upto] if not acc.replies] if unstage else []
            self.metrics.commit_failed_readings.inc(amount=len(batch) - len(staged))
            if isinstance(exc, OutboxFull):
                self._faults.log("outbox_full_disk", "event=outbox_commit_failed reason=disk_full frames=%d",
                                 len(batch))
            else:
                self._faults.log(f"commit/{type(exc).__name__}",
                                 "event=outbox_commit_failed frames=%d error=%r", len(batch), exc)
            for st, _, _ in advanced:
                st.rollback()
            for node_id, fs in self._recovering[3].items() if self._recovering else ():
                for f in fs:  # the rollback forgot them too: they are still waiting
                    self.replay.get(node_id).admit(f)
            self._reopen(staged)
            return
        for st, mark, seen in advanced:
            st.committed, st.committed_seen = mark, seen
        plan.committed()
        self.metrics.batch_records.observe(len(batch))
        self.metrics.batch_bytes.observe(len(payload))
        ledger = self.metrics.frames_out_ledger
        ledger.committed(batch_id, by_transport)
        depth = self.outbox.depth
        if len(ledger) > depth + max(_LEDGER_SLACK_MIN, depth // _LEDGER_SLACK_DIV):
            ledger.retain(set(self.outbox.pending_ids()))  # the outbox dropped some when full
        for acc, ack in acks:
            self.replay.get(acc.record.node_id).remember_ack(acc.record.fcnt, ack)
            for reply in acc.replies:
                self._reply(reply, ack)
        observe = self.health.observe
        for acc in batch:
            observe(acc.record, acc.kind)
        self.metrics.nodes_heard.set(self.health.heard)

    def _reopen(self, staged: list[Accepted]) -> None:
        """A failed commit's staged frames are still in the journal: they open the next batch,
        whose commit clears the journal, with their counters marked again (the rollback forgot
        them). Left out, the next batch's commit would clear the journal and lose them without
        any crash. The frame whose size closed the failed batch joins them: that pack may pass
        max_bytes by one frame, only after a failed commit."""
        if not staged:
            return
        for acc in staged:
            self.replay.get(acc.record.node_id).admit(acc.record.fcnt)
            self._index.add(acc)
            if acc.packed is None:
                acc.packed = encode_frame_body(acc.record)
            key = frame_key(acc.record)
            self._bytes += len(frame_head(key, self._last_key)) + len(acc.packed[0])
            self._last_key = key
        self._open = staged
        self._opened_s = time.monotonic()
        self._staged_upto = len(staged)
        self._staged = True  # the timer armed for the failed batch is due sooner: it arms for this one

    def _reply(self, reply: Any, ack: bytes) -> None:
        try:
            reply(ack)
            self.metrics.acks_sent.inc(_ACK_TRANSPORT)
        except Exception as exc:  # a port gone between frame and ack: the node retransmits
            _log.info("event=ack_write_failed error=%r", exc)

    # -- the deadline timer ---------------------------------------------------------------

    def _arm(self) -> None:
        """Make the timer fire by the next deadline. A timer already due sooner is kept (it
        fires, finds less or nothing to do, and arms for what is left): one timer a batch."""
        loop = self._loop
        due = self.deadline_s()
        if loop is None or due is None:
            return
        timer = self._timer
        if timer is not None:
            if timer.when() <= due:
                return
            timer.cancel()
        self._timer = loop.call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        timer, self._timer = self._timer, None
        # The loop runs a timer up to its clock resolution early; what was due is due.
        now = time.monotonic() if timer is None else max(time.monotonic(), timer.when())
        try:
            self.tick(now)
        except Exception as exc:  # a bug: reported as the batch stage's, retried later
            self.on_error(exc)
            if self._loop is not None and self._timer is None:
                self._timer = self._loop.call_later(_RETRY_S, self._on_timer)
            return
        self._arm()

    def _log_error(self, exc: Exception) -> None:
        self._faults.log(f"timer/{type(exc).__name__}", "event=batch_timer_failed error=%r", exc)

    def close(self) -> None:
        """Stop the timer (at shutdown, after the last flush)."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._loop = None

    async def run(self, queue: asyncio.Queue[Verdict]) -> None:
        """Consume verdicts until cancelled; the caller flushes on shutdown. Deadlines are
        the timer's: this task only waits for verdicts."""
        self._loop = asyncio.get_running_loop()
        self._arm()
        add, take = self.add, queue.get_nowait
        while True:
            add(await queue.get())
            # Drain what is already queued without yielding per item (throughput); nothing
            # else runs until this loop yields, so the count is taken once.
            for _ in range(queue.qsize()):
                add(take())
