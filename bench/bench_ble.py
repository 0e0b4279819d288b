"""BLE with a street's foreign traffic (bench_gateway phase ``ble_foreign``).

The datagram bleak backend (gateway/transports/datagram.py) is fed, by a sender process pinned
to the side CPU, with 1,000 nodes' frames, each heard ``repeats`` times 0.1 s apart, plus
``foreign_per_s`` foreign adverts a second (other company ids: phones, headphones, cars) for
``window_s``: the gateway's CPU over that window (its chores included: that is what a street
costs), per second and per advert. A second window sends the foreign adverts alone: the cost
of hearing and dropping one.

Under callgrind (``dilation`` set) the send times are stretched by ``dilation``, the batch
timers too, and the gateway's instructions are counted in each window; those of an idle window
as long are taken off both windows at the dilated rate and, for the street's instructions per
second, added back at the real one.
Instructions per advert do not depend on the machine's load; the CPU share does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.bench_cost import Callgrind


def sender_main(events_path: str, sock_path: str) -> int:
    """Sends [[t_s, hex], ...] to the gateway's socket at their times after "go"; prints a
    JSON summary (sent, refused: the socket stayed full for 0.1 s)."""
    events = [(t, bytes.fromhex(h)) for t, h in json.loads(Path(events_path).read_text())]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    print("ready", flush=True)
    sys.stdin.readline()  # "go"
    t0 = time.monotonic()
    sent = refused = 0
    for t, adv in events:
        delay = t0 + t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sock.settimeout(0.1)
        try:
            sock.sendto(adv, sock_path)
            sent += 1
        except (TimeoutError, BlockingIOError):
            refused += 1
    print(json.dumps({"sent": sent, "refused": refused, "send_s": round(time.monotonic() - t0, 3)}),
          flush=True)
    sock.close()
    return 0


def _street(ctx: dict[str, Any], work: Any, window_s: float) -> tuple[list[tuple[float, bytes]],
                                                                        list[tuple[float, bytes]]]:
    """(street events, the foreign ones alone), in street seconds."""
    from urbansense.wire.advert import encode_advert

    repeats, foreign_rate = ctx["ble_repeats"], ctx["ble_foreign_per_s"]
    node_rate = ctx["ble_node_frames_per_s"]
    rng = random.Random(7)
    n_frames = max(1, round(node_rate * window_s))
    ours = [encode_advert(f"AA:BB:CC:{i >> 8 & 0xFF:02X}:{i & 0xFF:02X}:01", -70 - rng.randrange(30), {0xFFFF: f})
            for i, f in enumerate(work.frames[:n_frames])]
    foreign = [encode_advert(f"{rng.randrange(1 << 48):012X}", -60 - rng.randrange(40),
                             {rng.choice((0x004C, 0x0006, 0x0075, 0x00E0)): rng.randbytes(rng.randrange(4, 24))})
               for _ in range(2000)]
    events: list[tuple[float, bytes]] = []
    for i, adv in enumerate(ours):
        t = i / node_rate
        events += [(t + k * 0.1, adv) for k in range(repeats)]
    alien = [(i / foreign_rate, foreign[i % len(foreign)]) for i in range(int(foreign_rate * window_s))]
    events = sorted(events + alien, key=lambda e: e[0])
    return events, alien


async def _window(ctx: dict[str, Any], gw: Any, tmp: Path, name: str, events: list[tuple[float, bytes]],
                  window_s: float, dilation: float, cg: Callgrind) -> dict[str, Any]:
    """One sender run; the gateway's CPU and instructions from "go" to window_s (dilated)."""
    from bench.machine import pin_pid_side

    path = tmp / f"{name}.json"
    path.write_text(json.dumps([[t * dilation, adv.hex()] for t, adv in events]))
    sender = subprocess.Popen(  # noqa: ASYNC220  (started here, talked to through its pipes)
        [sys.executable, "-m", "bench.bench_gateway", "--_ble_sender", str(path), gw.config.ble.datagram_socket],
        cwd=ctx["bench_root"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": ctx["bench_root"]},
    )
    pin_pid_side(sender.pid)
    assert sender.stdin is not None and sender.stdout is not None
    loop = asyncio.get_running_loop()
    try:
        assert (await loop.run_in_executor(None, sender.stdout.readline)).strip() == "ready"
        m = gw.metrics
        a0, d0 = m.frames_accepted.total(), m.duplicates.total()
        await cg.start()
        cpu0, t0 = time.process_time(), time.monotonic()
        sender.stdin.write("go\n")
        sender.stdin.flush()
        await asyncio.sleep(window_s * dilation)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
        ir = await cg.stop()
        line = await loop.run_in_executor(None, sender.stdout.readline)
    finally:
        with contextlib.suppress(OSError, ValueError):
            sender.stdin.close()
        await loop.run_in_executor(None, sender.wait, 30)
    summary = json.loads(line) if line.strip().startswith("{") else {}
    return {"adverts": len(events), "sent": summary.get("sent"), "refused_socket_full": summary.get("refused"),
            "frames_accepted": int(m.frames_accepted.total() - a0), "duplicates": int(m.duplicates.total() - d0),
            "cpu_s": cpu, "wall_s": wall, "ir": ir}


async def phase_ble_foreign(ctx: dict[str, Any], work: Any) -> dict[str, Any]:
    from bench.gw_harness import RunningGateway, gateway_config

    dilation = float(ctx.get("dilation", 1.0))
    window_s = float(ctx["ble_window_s"])
    foreign_s = float(ctx.get("ble_foreign_window_s", window_s / 2))
    tmp = Path(ctx["tmp"]) / "ble"
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = gateway_config(tmp, ctx["host"], ctx["port"], work, ctx["per_node_day"])
    cfg.ble.enabled, cfg.ble.backend, cfg.ble.datagram_socket = True, "datagram", str(tmp / "air.sock")
    cfg.batch.durable_ms = int(cfg.batch.durable_ms * dilation)
    cfg.batch.max_age_s *= dilation
    events, _ = _street(ctx, work, window_s)
    _, alien = _street(ctx, work, foreign_s)
    cg = Callgrind()
    async with RunningGateway(cfg) as gw:
        assert gw.ble is not None
        await asyncio.wait_for(gw.ble.started.wait(), 10)
        await asyncio.sleep(1.0)
        idle_s = 3.0 * dilation
        await cg.start()
        cpu0, t0 = time.process_time(), time.monotonic()
        await asyncio.sleep(idle_s)
        idle_cpu, idle_wall = time.process_time() - cpu0, time.monotonic() - t0
        idle_ir = await cg.stop()
        street = await _window(ctx, gw, tmp, "street", events, window_s, dilation, cg)
        alone = await _window(ctx, gw, tmp, "foreign", alien, foreign_s, dilation, cg)
    out: dict[str, Any] = {
        "window_s": window_s,
        "node_frames_per_s": ctx["ble_node_frames_per_s"],
        "repeats_per_frame": ctx["ble_repeats"],
        "foreign_adverts_per_s": ctx["ble_foreign_per_s"],
        "adverts_total": street["adverts"],
        "adverts_refused_socket_full": street["refused_socket_full"],
        "frames_accepted": street["frames_accepted"],
        "duplicates": street["duplicates"],
        "foreign_only": {"adverts": alone["adverts"], "refused_socket_full": alone["refused_socket_full"],
                         "frames_accepted": alone["frames_accepted"]},
    }
    if dilation == 1.0:
        share = street["cpu_s"] / street["wall_s"]
        out.update({
            "x86_cpu_share_pct": round(share * 100, 3),
            "x86_cpu_us_per_advert": round(street["cpu_s"] / street["adverts"] * 1e6, 1),
            "x86_idle_cpu_share_pct": round(idle_cpu / idle_wall * 100, 3),
            "x86_cpu_us_per_foreign_advert_net_of_idle": round(
                (alone["cpu_s"] - idle_cpu / idle_wall * alone["wall_s"]) / alone["adverts"] * 1e6, 1),
        })
    if cg.enabled:
        idle_per_s = idle_ir / idle_wall
        out.update({
            "dilation": dilation,
            # The idle part runs per second of real time: taken off at the dilated rate, added
            # back once per street second.
            "instructions_per_street_second": round(
                (street["ir"] - idle_per_s * street["wall_s"]) / window_s + idle_per_s),
            "instructions_per_advert_net_of_idle": round(
                (street["ir"] - idle_per_s * street["wall_s"]) / street["adverts"]),
            "instructions_per_foreign_advert_net_of_idle": round(
                (alone["ir"] - idle_per_s * alone["wall_s"]) / alone["adverts"]),
            "idle_instructions_per_s": round(idle_per_s),
        })
    return out
