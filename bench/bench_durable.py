"""What batch.durable_ms costs the SD card: outbox bytes written per day for a BLE site.

Run: .venv/bin/python -m bench.bench_durable  (prints one JSON object)

The real verify -> batch -> outbox path on a file with the gateway's 1 KiB pages, driven by a
simulated clock (ticks of 10 ms, as the batch stage wakes at its deadlines): BLE frames from
30 nodes at a steady rate for 10 simulated minutes, scaled to a day. The figure is the
gateway's own ``disk_bytes_written`` (write(2) bytes of SQLite, what the status page shows),
not what the card's flash translation layer makes of them. Rows: staging off (the loss
window is the batch age, ``max_age_s`` 5 s), the default ``durable_ms`` 1000, 250 ms, and
the same 1 s bound had by closing every batch at 1 s instead.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

import gateway.batcher
from gateway.batcher import Batcher
from gateway.config import BatchConfig, HealthConfig
from gateway.flow import Heard
from gateway.health import Health
from gateway.metrics import Metrics
from gateway.outbox import SD_PAGE_SIZE, Outbox
from gateway.registry import Node, Registry
from gateway.replay import ReplayTable
from gateway.verify import Verifier
from tests.test_gw_support import KEYS, frame
from urbansense.wire.protocol import NodeKeys

NODES = 30
SECONDS = 600
TICK_S = 0.01


def site_day(cfg: BatchConfig, rate_hz: float) -> dict[str, Any]:
    registry = Registry(Node(n, "water", NodeKeys(k)) for n, k in KEYS.items())
    clock = [1000.0]
    with tempfile.TemporaryDirectory() as d, mock.patch.object(gateway.batcher.time, "monotonic", lambda: clock[0]):
        metrics = Metrics()
        outbox = Outbox(Path(d) / "outbox.db", 1 << 28, metrics, page_size=SD_PAGE_SIZE)
        replay = ReplayTable(outbox.load_nodes())
        verifier = Verifier(registry, replay, metrics)
        batcher = Batcher(cfg, outbox, registry, replay, Health(HealthConfig(), registry, lambda *a: None, 0.0),
                          metrics)
        fcnt: dict[int, int] = {}
        ticks_per_frame = max(1, round(1 / (rate_hz * TICK_S)))
        for i in range(int(SECONDS * rate_hz)):
            node = 1 + i % NODES
            fcnt[node] = fcnt.get(node, 0) + 1
            v = verifier.process(Heard(frame(node, fcnt[node]), "ble", -70))
            assert v is not None
            batcher.add(v)
            for _ in range(ticks_per_frame):
                clock[0] += TICK_S
                batcher.tick()
        outbox.close()
    per_day = 86400 / SECONDS
    return {
        "mb_per_day": round(metrics.disk_bytes_written.total() * per_day / 1e6, 1),
        "commits_per_day": round((metrics.batches.total() + metrics.staging_commits.total()) * per_day),
        "frames_per_batch": round(metrics.readings_committed.total() / max(1.0, metrics.batches.total()), 1),
    }


def main() -> None:
    configs = {
        "staging_off_max_age_5s": BatchConfig(max_age_s=5.0, durable_ms=10**9),
        "durable_1000ms_max_age_5s": BatchConfig(max_age_s=5.0, durable_ms=1000),
        "durable_250ms_max_age_5s": BatchConfig(max_age_s=5.0, durable_ms=250),
        "durable_1000ms_max_age_30s": BatchConfig(max_age_s=30.0, durable_ms=1000),
        "no_staging_max_age_1s": BatchConfig(max_age_s=1.0, durable_ms=10**9),
    }
    out = {f"{rate}_frames_per_s": {name: site_day(cfg, rate) for name, cfg in configs.items()}
           for rate in (0.1, 1.0, 10.0)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
