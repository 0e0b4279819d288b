"""SIGKILL the gateway process at random points under load: nothing it acknowledged is lost."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.registry import NodeSpec, write_registry
from tests.test_gw_support import KEYS, PtyNode, Subscriber, decode_ack, frame, wait_for

ROOT = Path(__file__).resolve().parents[1]
NODES = (1, 2, 3, 4)


class GatewayProcess:
    def __init__(self, config: Path) -> None:
        self.config = config
        self.env: dict[str, str] | None = None  # the process's environment (None: this one's)
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self.serial_open = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.serial_open.clear()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "urbansense", "gateway", "run", "--config", str(self.config),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT, env=self.env,
        )
        self._reader = asyncio.create_task(self._read())
        await asyncio.wait_for(self.serial_open.wait(), 15)

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            if "event=serial_open" in line:
                self.serial_open.set()

    def ensure_dead(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()

    async def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        rc = await asyncio.wait_for(self.proc.wait(), 15)
        if self._reader:
            await self._reader
        return rc


async def test_sigkill_under_load_loses_nothing_acked(tmp_path: Path, mqtt_broker: Any) -> None:
    await crash_loop(tmp_path, mqtt_broker, kills_wanted=6, seed=1234)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_sigkill_soak(tmp_path: Path, mqtt_broker: Any, seed: int) -> None:
    """The same, 40 lives per seed (make soak)."""
    await crash_loop(tmp_path, mqtt_broker, kills_wanted=40, seed=seed)


async def crash_loop(tmp_path: Path, mqtt_broker: Any, kills_wanted: int, seed: int) -> None:
    rng = random.Random(seed)
    write_registry(tmp_path / "nodes.jsonl", [NodeSpec(n, "water", KEYS[n]) for n in NODES])
    link = tmp_path / "by-id-node"
    node = PtyNode(link)
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f"""
[gateway]
site = "crash"
id = "gw-9"
registry = "nodes.jsonl"
data_dir = "data"
[batch]
max_age_s = 0.05
ack_max_delay_ms = 5
[mqtt]
brokers = ["{mqtt_broker.host}:{mqtt_broker.port}"]
backoff_min_s = 0.05
backoff_max_s = 0.3
[serial]
ports = ["{link}"]
retry_min_s = 0.05
retry_max_s = 0.2
[http]
enabled = false
""")
    sub = Subscriber(mqtt_broker, "urbansense/v1/crash/gw-9/up").start()
    await asyncio.wait_for(sub.ready.wait(), 10)
    gw = GatewayProcess(cfg)
    try:
        fcnt = dict.fromkeys(NODES, 0)
        sent: dict[tuple[int, int], bytes] = {}
        acked: set[tuple[int, int]] = set()
        seen_acks = 0

        def collect_acks() -> None:
            nonlocal seen_acks
            for raw in node.acks[seen_acks:]:
                node_id = int.from_bytes(raw[1:5], "little")
                _, fc, _ = decode_ack(node_id, raw)
                acked.add((node_id, fc))
            seen_acks = len(node.acks)

        async def load(duration_s: float) -> None:
            """New frames plus retransmission of the unacked ones, as a serial node does."""
            loop = asyncio.get_running_loop()
            end = loop.time() + duration_s
            while loop.time() < end:
                collect_acks()
                pending = [k for k in sent if k not in acked][:8]
                for k in pending:
                    node.send(sent[k])
                n = rng.choice(NODES)
                fcnt[n] += 1
                sent[(n, fcnt[n])] = frame(n, fcnt[n])
                node.send(sent[(n, fcnt[n])])
                await asyncio.sleep(0.003)

        kills = 0
        for _ in range(kills_wanted):
            await gw.start()
            await load(rng.uniform(0.2, 0.8))
            rc = await gw.kill()
            assert rc == -signal.SIGKILL
            kills += 1
            collect_acks()
        # Last life: no new frames; the node retransmits until everything is acked.
        await gw.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while any(k not in acked for k in sent) and loop.time() < deadline:
            for k in [k for k in sent if k not in acked][:16]:
                node.send(sent[k])
            await asyncio.sleep(0.02)
            collect_acks()
        assert kills == kills_wanted and len(acked) > 50
        try:
            await wait_for(lambda: acked <= set(sub.keys()), timeout_s=15, what="every acked frame delivered")
        except AssertionError:
            missing = sorted(acked - set(sub.keys()))
            broker = [ln for ln in mqtt_broker.log if "dropped" in ln or "rror" in ln][-10:]
            raise AssertionError(f"acked, never delivered: {missing[:20]}\nbroker: {broker}\n"
                                 + "\n".join(gw.lines[-60:])) from None
        assert set(sub.keys()) <= set(sent)  # nothing invented
        unacked = sorted(k for k in sent if k not in acked)
        assert not unacked, f"never acked: {unacked[:20]}\n" + "\n".join(gw.lines[-60:])
        rc = await gw.kill(signal.SIGTERM)
        assert rc == 0
        assert any("event=gateway_stopped" in line for line in gw.lines)
    finally:
        gw.ensure_dead()  # a failed assertion must not leave a gateway running
        await sub.stop()
        node.close()
