"""Gateway cost at the rates a street gives it (bench_gateway phases ``serial_rates``, ``ble_foreign``).

``serial_rates``: one pty, a writer process (pinned to the side CPU) writes one serial packet
per write(2) at a fixed rate, as a USB adapter may deliver them, and reads the acks. The
gateway's CPU (user + system, ``time.process_time``) from the first frame to the last PUBACK,
per reading, at full speed, 500/s and 100/s. With ``instructions`` set the phase runs under
``valgrind --tool=callgrind`` with time dilated by ``dilation`` (rates divided, batch timers
multiplied: the same frames per wake-up and per batch), and the instructions of the window are
counted between ``callgrind_control -z`` and ``-d``, less the idle instructions of as long a
window: a count that does not depend on how busy the shared machine is. The idle window polls
for its end as the measured one does, so the bench's own polling is taken off with it; the
gateway's idle cost (chores and keepalives, per second of real time) is given apart and, in
``instructions_per_reading_with_idle_at_rate``, spread over the readings of a second at that
rate undilated. The window ends when every frame is acked and published and every node event
the frames raised is published (``node_events``; none with this workload: see below).

``ble_foreign``: bench/bench_ble.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import select
import subprocess
import sys
import time
import tty
from pathlib import Path
from typing import Any

IDLE_WINDOW_S = 3.0
# The bench's check for the end of a window, in the idle window too (times the dilation: under
# callgrind each check costs ~50,000 instructions, and 20 a second outweighed a reading at 100/s).
POLL_S = 0.05


def writer_main(frames_path: str, rate: float, timeout_s: float) -> int:
    """The node end of the pty: prints its slave path, writes on "go", reports acks on exit."""
    from urbansense.wire import framing

    hexes = json.loads(Path(frames_path).read_text())["frames_hex"]
    packets = [framing.wrap(bytes.fromhex(h)) for h in hexes]
    master, slave = os.openpty()
    tty.setraw(slave)
    print(os.ttyname(slave), flush=True)
    os.set_blocking(master, False)
    splitter = framing.PacketSplitter()
    acks = 0

    def drain() -> None:
        nonlocal acks
        while True:
            try:
                data = os.read(master, 65536)
            except (BlockingIOError, OSError):
                return
            if not data:
                return
            acks += len(splitter.feed(data))

    sys.stdin.readline()  # "go"
    t0 = time.monotonic()
    for i, p in enumerate(packets):
        if rate:
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        while p:
            with contextlib.suppress(BlockingIOError):
                p = p[os.write(master, p):]  # whole, unless the gateway is behind
            if p:  # wait for room
                drain()
                time.sleep(0.0005)
        drain()
    write_s = time.monotonic() - t0
    deadline = time.monotonic() + timeout_s
    while acks < len(packets) and time.monotonic() < deadline:
        drain()
        time.sleep(0.01)
    print(json.dumps({"acks": acks, "write_s": write_s}), flush=True)
    while True:  # keep the pty open and read until the gateway is done (its close drains)
        readable, _, _ = select.select([sys.stdin, master], [], [], 1.0)
        if master in readable:
            drain()
        if sys.stdin in readable:
            sys.stdin.readline()
            break
    os.close(slave)
    os.close(master)
    return 0


class Callgrind:
    """Instruction counts of windows of this process, when it runs under callgrind."""

    def __init__(self) -> None:
        self.enabled = any(k.startswith("VALGRIND") for k in os.environ) or os.environ.get("BENCH_CALLGRIND") == "1"
        self.pid = os.getpid()

    async def _control(self, flag: str) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: subprocess.run(
            ["callgrind_control", flag, str(self.pid)], capture_output=True, timeout=600, check=False))

    async def start(self) -> None:
        if self.enabled:
            await self._control("-z")

    async def stop(self) -> int:
        """Instructions since start()."""
        if not self.enabled:
            return 0
        before = set(glob.glob(f"{os.environ['BENCH_CALLGRIND_OUT']}*"))
        await self._control("-d")
        new = sorted(set(glob.glob(f"{os.environ['BENCH_CALLGRIND_OUT']}*")) - before)
        return max((_total(p) for p in new), default=0)


def _total(path: str) -> int:
    for line in Path(path).read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    return 0


async def serial_rate(ctx: dict[str, Any], work: Any, rate: float, n: int, tag: str) -> dict[str, Any]:
    from bench.gw_harness import RunningGateway, gateway_config, wait_until
    from bench.machine import pin_pid_side

    dilation = float(ctx.get("dilation", 1.0))
    tmp = Path(ctx["tmp"]) / tag
    tmp.mkdir(parents=True, exist_ok=True)
    frames = work.frames[:n]
    fpath = tmp / "frames.json"
    fpath.write_text(json.dumps({"frames_hex": [f.hex() for f in frames]}))
    wrate = rate / dilation if rate else 0.0
    writer = subprocess.Popen(  # noqa: ASYNC220  (started here, talked to through its pipes)
        [sys.executable, "-m", "bench.bench_gateway", "--_serial_writer", str(fpath), str(wrate), "120"],
        cwd=ctx["bench_root"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": ctx["bench_root"]},
    )
    pin_pid_side(writer.pid)
    assert writer.stdout is not None and writer.stdin is not None
    loop = asyncio.get_running_loop()
    slave = (await loop.run_in_executor(None, writer.stdout.readline)).strip()
    cfg = gateway_config(tmp, ctx["host"], ctx["port"], work, ctx["per_node_day"])
    cfg.serial.ports = [slave]
    cfg.batch.ack_max_delay_ms = int(cfg.batch.ack_max_delay_ms * dilation)
    cfg.batch.max_age_s *= dilation
    # The workload draws each bin frame's battery anew between 3000 and 3700 mV, so a bin
    # crosses the 3300 mV threshold every other frame and raises a low_battery event about
    # every ten readings, each published like a batch: a street's batteries do not do that.
    # The events are counted (node_events) and waited for; this run has none.
    cfg.health.low_battery_mv = 1
    cg = Callgrind()
    try:
        async with RunningGateway(cfg) as gw:
            m = gw.metrics
            await asyncio.wait_for(gw.serial_ports[0].opened.wait(), 30)
            await asyncio.sleep(1.0)
            idle_s = float(ctx.get("idle_window_s", IDLE_WINDOW_S))
            await cg.start()
            cpu0, t0 = time.process_time(), time.monotonic()
            # Polled as the measured window below polls for its end, so that the bench's own
            # polling is in both windows and taken off with the idle instructions.
            poll_s = POLL_S * dilation
            idle_end = time.monotonic() + idle_s
            await wait_until(lambda: time.monotonic() >= idle_end, idle_s + 60, "idle window", poll_s)
            idle_cpu, idle_wall = time.process_time() - cpu0, time.monotonic() - t0
            idle_ir = await cg.stop()
            d0, b0 = m.disk_bytes_written.total(), m.batches.total()
            emitted = _count_events(gw)
            await cg.start()
            profiler = _profiler(ctx)
            cpu0, t0, times0 = time.process_time(), time.monotonic(), os.times()
            writer.stdin.write("go\n")
            writer.stdin.flush()
            # The window also holds the node events the frames raised (health: low battery,
            # alarms), published after the frames at full speed: else only the slow rates paid.
            await wait_until(lambda: m.published_readings.total() >= n and m.acks_sent.total() >= n
                             and m.events.total() + m.events_dropped.total() >= emitted[0],
                             120 + n / (wrate or 1000), f"{tag}: PUBACKs, acks and events", poll_s)
            cpu, wall, times1 = time.process_time() - cpu0, time.monotonic() - t0, os.times()
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(str(tmp / "window.prof"))
            ir = await cg.stop()
            disk, batches = m.disk_bytes_written.total() - d0, m.batches.total() - b0
            committed = m.readings_committed.total()
            rejected = m.rejections.total()
    finally:
        with contextlib.suppress(OSError, ValueError):  # a writer that died must not hide the error
            writer.stdin.write("\n")
            writer.stdin.flush()
        line = await loop.run_in_executor(None, writer.stdout.readline)
        with contextlib.suppress(OSError, ValueError):  # a writer that died must not hide the error
            writer.stdin.write("\n")
            writer.stdin.close()
        await loop.run_in_executor(None, writer.wait, 30)
    wr = json.loads(line) if line.strip().startswith("{") else {}
    idle_share = idle_cpu / idle_wall
    res: dict[str, Any] = {
        "rate_frames_per_s": rate or "full speed",
        "frames": n,
        "committed": int(committed),
        "rejected": int(rejected),
        "acks_at_node": wr.get("acks"),
        "wall_s": round(wall, 3),
        "batches": int(batches),
        "frames_per_batch_mean": round(n / batches, 1) if batches else None,
        "node_events": emitted[0],
        "disk_write_bytes_per_reading": round(disk / n, 1),
    }
    if dilation == 1.0:
        res.update({
            "cpu_us_per_reading": round(cpu / n * 1e6, 1),
            "cpu_us_per_reading_net_of_idle": round(max(0.0, cpu - idle_share * wall) / n * 1e6, 1),
            "cpu_user_us_per_reading": round((times1.user - times0.user) / n * 1e6, 1),
            "cpu_system_us_per_reading": round((times1.system - times0.system) / n * 1e6, 1),
            "idle_cpu_share_pct": round(idle_share * 100, 3),
        })
    if cg.enabled:
        res.update({
            "dilation": dilation,
            "instructions_per_reading": round(ir / n),
            "instructions_per_reading_net_of_idle": round((ir - idle_ir * wall / idle_wall) / n),
            "idle_instructions_per_s_dilated": round(idle_ir / idle_wall),
            # The idle cost (chores, keepalives: per second of real time) at this rate undilated.
            "instructions_per_reading_with_idle_at_rate": round(
                (ir - idle_ir * wall / idle_wall) / n + (idle_ir / idle_wall / rate if rate else 0)),
        })
    return res


def _count_events(gw: Any) -> list[int]:
    """Node events the health stage emits from now on ([count], updated as they come)."""
    emitted = [0]
    sink = gw.health.sink

    def counting(event: dict[str, Any]) -> None:
        emitted[0] += 1
        sink(event)

    gw.health.sink = counting
    return emitted


def _profiler(ctx: dict[str, Any]) -> Any:
    """A running cProfile when the run asked for one (``--profile``): its stats go beside the
    phase's files as window.prof, for pstats."""
    if not ctx.get("profile"):
        return None
    import cProfile

    profiler = cProfile.Profile(time.process_time)  # CPU, not the fsyncs' wall time
    profiler.enable()
    return profiler


async def phase_serial_rates(ctx: dict[str, Any], work: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"how": "one serial packet per write(2) on a pty; gateway CPU from first "
                                  "frame to last PUBACK and ack, over the frames"}
    for rate, n in ctx["serial_rates"]:
        tag = f"rate_{int(rate) or 'full'}"
        out[tag] = await serial_rate(ctx, work, float(rate), int(n), tag)
    full = out.get("rate_full", {}).get("cpu_us_per_reading")
    for r in out.values():
        if isinstance(r, dict) and full and "cpu_us_per_reading" in r:
            r["ratio_to_full_speed"] = round(r["cpu_us_per_reading"] / full, 2)
    return out
