"""In-process metrics and their Prometheus text exposition (format 0.0.4), no dependency.

``Metrics`` holds every figure the gateway reports; stages increment plain attributes, the
HTTP endpoint renders them. Values are readable in-process (tests, the bench).
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Container, Iterable
from typing import Final

from urbansense.wire.protocol import REASONS

_LATENCY_BUCKETS_S: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# The codec's reasons plus the registry's own: a revoked node's frames (gateway/registry.py).
REJECT_REASONS: Final = (*REASONS, "revoked_node")
_BATCH_BUCKETS: Final = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
_BATCH_BYTES_BUCKETS: Final = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
UNKNOWN_TRANSPORT: Final = "unknown"  # batches committed before a restart


class Counter:
    """A labelled monotonic counter (one label dimension is all we need)."""

    __slots__ = ("help", "label", "name", "values")

    def __init__(self, name: str, help_: str, label: str = "", labels: Iterable[str] = ()) -> None:
        self.name = name
        self.help = help_
        self.label = label
        self.values: dict[str, float] = dict.fromkeys(labels, 0.0)

    def inc(self, label: str = "", amount: float = 1.0) -> None:
        self.values[label] = self.values.get(label, 0.0) + amount

    def get(self, label: str = "") -> float:
        return self.values.get(label, 0.0)

    def total(self) -> float:
        return sum(self.values.values())

    kind = "counter"

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        if not self.values:
            lines.append(f"{self.name} 0")
        for lab, v in sorted(self.values.items()):
            sel = f'{{{self.label}="{_esc(lab)}"}}' if self.label else ""
            lines.append(f"{self.name}{sel} {_num(v)}")
        return lines


class Gauge(Counter):
    __slots__ = ()
    kind = "gauge"

    def set(self, value: float, label: str = "") -> None:
        self.values[label] = value


class Histogram:
    __slots__ = ("bounds", "count", "counts", "help", "name", "sum")

    def __init__(self, name: str, help_: str, bounds: Iterable[float]) -> None:
        self.name = name
        self.help = help_
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding quantile q (coarse, for the status page)."""
        if not self.count:
            return 0.0
        target = q * self.count
        acc = 0
        for i, c in enumerate(self.counts):
            acc += c
            if acc >= target:
                return self.bounds[i] if i < len(self.bounds) else float("inf")
        return float("inf")

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        acc = 0
        for bound, c in zip(self.bounds, self.counts, strict=False):
            acc += c
            lines.append(f'{self.name}_bucket{{le="{_num(bound)}"}} {acc}')
        lines.append(f'{self.name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{self.name}_sum {_num(self.sum)}")
        lines.append(f"{self.name}_count {self.count}")
        return lines


class TransportLedger:
    """Frames per transport of each batch waiting for its PUBACK.

    The outbox stores packs transport-agnostic (consumers need no transport), so this is how
    ``frames_out{transport}`` is counted at the PUBACK. Batches committed before a restart are
    not known here and count as ``unknown``. Rows live in parallel arrays (14 bytes per batch
    and transport) in batch id order, as the outbox keeps its own: a long outage holds many.
    """

    __slots__ = ("_counts", "_dead", "_ids", "_names", "_tix", "batches", "counter")

    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self._names: list[str] = []
        self._ids = array("q")
        self._tix = array("h")  # index into _names
        self._counts = array("i")  # 0: counted or forgotten
        self._dead = 0
        self.batches = 0  # batches with rows still waiting

    def committed(self, batch_id: int, frames_by_transport: dict[str, int]) -> None:
        if self._ids and batch_id <= self._ids[-1]:
            return  # ids only grow; were one reused it would count as unknown
        for transport, n in frames_by_transport.items():
            if transport not in self._names:
                self._names.append(transport)
            self._ids.append(batch_id)
            self._tix.append(self._names.index(transport))
            self._counts.append(n)
        self.batches += 1

    def published(self, batch_id: int, frames: int) -> None:
        i = bisect.bisect_left(self._ids, batch_id)
        found = False
        while i < len(self._ids) and self._ids[i] == batch_id:
            if self._counts[i]:
                self.counter.inc(self._names[self._tix[i]], self._counts[i])
                self._counts[i] = 0
                self._dead += 1
                found = True
            i += 1
        if not found:
            self.counter.inc(UNKNOWN_TRANSPORT, frames)
            return
        self.batches -= 1
        if self._dead > len(self._ids) - self._dead + 64:
            self.retain(None)

    def retain(self, live: Container[int] | None) -> None:
        """Drop counted rows, and those of batches not in ``live`` (the outbox dropped them)."""
        keep = [i for i in range(len(self._ids))
                if self._counts[i] and (live is None or self._ids[i] in live)]
        self._ids = array("q", (self._ids[i] for i in keep))
        self._tix = array("h", (self._tix[i] for i in keep))
        self._counts = array("i", (self._counts[i] for i in keep))
        self._dead = 0
        ids = self._ids
        self.batches = sum(1 for i in range(len(ids)) if i == 0 or ids[i] != ids[i - 1])

    def __len__(self) -> int:
        return self.batches


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


class Metrics:
    """Every metric of one gateway instance."""

    def __init__(self) -> None:
        p = "urbansense_gateway_"
        self.frames_in = Counter(p + "frames_in_total", "Frames received, by transport.", "transport")
        self.frames_accepted = Counter(
            p + "frames_accepted_total", "Frames verified and fresh, by transport.", "transport"
        )
        self.rejections = Counter(
            p + "rejections_total", "Frames rejected, by reason.", "reason", REJECT_REASONS
        )
        self.registry_reloads = Counter(
            p + "registry_reloads_total", "Registry reloads (SIGHUP or file change), by result.",
            "result", ("ok", "failed"),
        )
        self.duplicates = Counter(p + "duplicates_total", "Frames heard again and not forwarded.")
        self.late_frames = Counter(
            p + "late_frames_total", "Frames accepted below the high-water mark (replay window)."
        )
        self.acks_sent = Counter(
            p + "acks_sent_total", "Acks written to nodes, by transport (serial only).", "transport"
        )
        self.frames_out = Counter(
            p + "frames_out_total", "Frames acknowledged by the broker, by the transport they came in on.",
            "transport",
        )
        self.frames_out_ledger = TransportLedger(self.frames_out)
        self.queue_drops = Counter(
            p + "queue_drops_total", "Frames dropped because a pipeline queue was full.", "queue"
        )
        self.batches = Counter(p + "batches_total", "Batches committed to the outbox.")
        self.batch_records = Histogram(
            p + "batch_frames", "Frames per batch.", _BATCH_BUCKETS
        )
        self.batch_bytes = Histogram(
            p + "batch_bytes", "SenML-CBOR payload bytes per committed batch.", _BATCH_BYTES_BUCKETS
        )
        self.readings_committed = Counter(p + "readings_committed_total", "Frames committed.")
        self.staging_commits = Counter(
            p + "staging_commits_total",
            "Writes that made BLE frames of an open batch durable (batch.durable_ms).",
        )
        self.outbox_depth = Gauge(p + "outbox_batches", "Batches waiting in the outbox.")
        self.outbox_bytes = Gauge(
            p + "outbox_bytes",
            "Estimated database bytes waiting (payload + SQLite row overhead), bounded by outbox.max_bytes.",
        )
        self.commit_failed_readings = Counter(
            p + "commit_failed_readings_total",
            "Frames lost to this gateway because the outbox could not commit (disk full, I/O error).",
        )
        self.outbox_dropped_batches = Counter(
            p + "outbox_dropped_batches_total", "Batches dropped because the outbox was full.", "priority"
        )
        self.outbox_dropped_readings = Counter(
            p + "outbox_dropped_readings_total", "Frames dropped because the outbox was full."
        )
        self.outbox_corrupt = Counter(
            p + "outbox_corrupt_total", "Corrupt outbox rows skipped at start-up."
        )
        self.disk_bytes_written = Counter(
            p + "disk_bytes_written_total", "Bytes the outbox wrote to disk (write syscalls)."
        )
        self.published_batches = Counter(p + "published_batches_total", "Batches acknowledged by the broker.")
        self.published_bytes = Counter(p + "published_bytes_total", "Payload bytes acknowledged by the broker.")
        self.published_readings = Counter(p + "published_readings_total", "Frames acknowledged by the broker.")
        self.publish_latency = Histogram(
            p + "publish_latency_seconds", "PUBLISH to PUBACK.", _LATENCY_BUCKETS_S
        )
        self.broker_connected = Gauge(p + "broker_connected", "1 while connected to a broker.")
        self.broker_connects = Counter(p + "broker_connects_total", "Successful broker connections.")
        self.broker_errors = Counter(p + "broker_errors_total", "Broker connection failures.")
        self.events = Counter(p + "events_total", "Node events published, by type.", "type")
        self.events_dropped = Counter(p + "events_dropped_total", "Events dropped (queue full).")
        self.downlinks = Counter(p + "downlinks_total", "Downlink commands received.", "result")
        self.serial_ports_open = Gauge(p + "serial_ports_open", "Serial ports currently open.")
        self.serial_reopens = Counter(p + "serial_reopens_total", "Serial port (re)opens.", "port")
        self.ble_scanner_healthy = Gauge(p + "ble_scanner_healthy", "1 while the BLE scanner hears adverts.")
        self.ble_recoveries = Counter(
            p + "ble_recoveries_total", "BLE scanner recovery actions, by step.", "step"
        )
        self.ble_adverts = Counter(p + "ble_adverts_total", "BLE advertisements seen (any company).")
        self.ble_recovery_step = Gauge(
            p + "ble_recovery_step",
            "BLE recovery steps taken in the current stall (0 none, 3 power cycled and backing off).",
        )
        self.ble_stall_threshold_seconds = Gauge(
            p + "ble_stall_threshold_seconds",
            "Silence after which the BLE scanner counts as stalled (learned).",
        )
        self.ble_backoff_seconds = Gauge(
            p + "ble_backoff_seconds", "Wait after a failed BLE recovery round before the next one."
        )
        self.ble_recovered = Counter(
            p + "ble_recovered_total",
            "BLE stalls ended by adverts heard again, by the last recovery step taken.", "step",
        )
        self.ble_power_cycle_failures = Counter(
            p + "ble_power_cycle_failures_total", "Power-cycle commands that failed, by reason.", "reason"
        )
        self.ble_scan_window_equals_interval = Gauge(
            p + "ble_scan_window_equals_interval",
            "1 if BlueZ scans with window = interval, 0 if not, -1 unknown.",
        )
        self.ble_scan_window_equals_interval.set(-1)
        self.datagrams_malformed = Counter(
            p + "datagrams_malformed_total",
            "Datagram-input datagrams that are no advert (docs/GATEWAY.md); not counted as frames.",
        )
        self.nodes_heard = Gauge(p + "nodes_heard", "Nodes heard since start.")
        self.internal_errors = Counter(
            p + "internal_errors_total",
            "Bugs caught inside a stage that kept running (the input was dropped), by stage.", "stage",
        )
        self.stage_restarts = Counter(
            p + "stage_restarts_total", "Pipeline stages restarted after an unexpected error.", "stage"
        )

    def all(self) -> list[Counter | Histogram]:
        return [v for v in vars(self).values() if isinstance(v, Counter | Histogram)]

    def render(self) -> str:
        lines: list[str] = []
        for m in self.all():
            lines.extend(m.render())
        # The headline figure for SD-card wear.
        readings = self.readings_committed.total()
        per = self.disk_bytes_written.total() / readings if readings else 0.0
        lines += [
            "# HELP urbansense_gateway_disk_bytes_per_reading Outbox bytes written per committed frame.",
            "# TYPE urbansense_gateway_disk_bytes_per_reading gauge",
            f"urbansense_gateway_disk_bytes_per_reading {_num(per)}",
        ]
        return "\n".join(lines) + "\n"
