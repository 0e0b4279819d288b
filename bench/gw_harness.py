"""The running-gateway harness every gateway phase shares: a pinned broker, the config, the run.

Contract: ``start_broker`` starts a private mosquitto pinned off the measured core
(``bench.machine.pin_pid_side``; ``broker_pid`` gives its pid across restarts);
``gateway_config`` writes the workload's registry and returns a deployed-default
``GatewayConfig`` for site ``SITE``, gateway ``GW_ID`` (so it publishes on ``UP_TOPIC``) with
the status page on a free port; ``RunningGateway`` is an async context manager that yields the
gateway once it has started and its publisher is connected, and stops it on exit;
``feed_all`` feeds frames as fast as the ingress queue takes them; ``wait_until`` polls a
predicate and raises ``TimeoutError`` naming what it waited for; ``settle_and_flush`` closes
the last partial batch once verify has caught up; ``log`` writes to stderr (stdout carries the
JSON).

Why: bench_gateway's phases, bench_cost (``serial_rates``) and bench_ble (``ble_foreign``) must
run the very same gateway the same way, or their figures do not compare. Gateway and
urbansense imports stay inside the functions: a phase child loads this module, then puts the
``--previous`` tree first on ``sys.path``, and only later imports the gateway it measures.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from pathlib import Path
from typing import Any

from bench.frames import Workload
from bench.machine import pin_pid_side

SITE, GW_ID = "bench", "gw-1"
UP_TOPIC = f"urbansense/v1/{SITE}/{GW_ID}/up"


def log(msg: str) -> None:
    print(f"[bench_gateway] {msg}", file=sys.stderr, flush=True)


def start_broker(workdir: Path) -> Any:
    try:
        from urbansense.broker import Broker
    except ImportError:  # older tree: the broker lived with the tests
        from tests.support.broker import Broker  # type: ignore[no-redef]
    broker = Broker(workdir).start()
    proc = broker._proc  # pin the broker process away from the measured core
    if proc is not None:
        pin_pid_side(proc.pid)
    return broker


def broker_pid(broker: Any) -> int | None:
    proc = getattr(broker, "_proc", None)
    return proc.pid if proc is not None else None


def gateway_config(tmp: Path, host: str, port: int, work: Workload, per_node_day: float) -> Any:
    from gateway.config import BrokerAddress, GatewayConfig
    from gateway.registry import NodeSpec, write_registry

    tmp.mkdir(parents=True, exist_ok=True)
    reg = tmp / "nodes.jsonl"
    write_registry(reg, [NodeSpec(nid, work.kinds[nid], key, 86400.0 / per_node_day)
                         for nid, key in work.keys.items()])
    cfg = GatewayConfig(site=SITE, gateway_id=GW_ID, registry=reg, data_dir=tmp / "data")
    cfg.mqtt.brokers = [BrokerAddress(host, port)]
    cfg.http.port = 0  # the status page runs, as deployed, on a free port
    return cfg


class RunningGateway:
    def __init__(self, cfg: Any) -> None:
        from gateway.app import Gateway

        self.gw = Gateway(cfg)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Any:
        self.task = asyncio.create_task(self.gw.run())
        await asyncio.wait_for(self.gw.started.wait(), 30)
        assert self.gw.publisher is not None
        await asyncio.wait_for(self.gw.publisher.connected.wait(), 30)
        return self.gw

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.wait_for(self.gw.stop(), 30)
        assert self.task is not None
        await self.task


async def feed_all(gw: Any, frames: list[bytes], transport: str = "bench") -> None:
    """Feed as fast as the ingress queue takes them; wait for room instead of spinning."""
    from gateway.flow import Heard

    q = gw.ingress
    feed = gw.feed
    i, n = 0, len(frames)
    while i < n:
        # As many as there is room for without a full() check each (bench overhead, not gateway).
        for f in itertools.islice(frames, i, min(n, i + q.maxsize - q.qsize())):
            feed(f, transport)
            i += 1
        if i < n:
            await q.put(Heard(frames[i], transport))
            i += 1


async def wait_until(pred: Any, timeout_s: float, what: str, poll_s: float = 0.005) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(poll_s)


async def settle_and_flush(gw: Any, accepted: int) -> None:
    """Close the last partial batch now instead of after max_age_s (time compression only)."""
    await wait_until(lambda: gw.metrics.frames_accepted.total() >= accepted and gw.verdicts.empty(),
                     120, "verify to catch up")
    gw.batcher.flush()
