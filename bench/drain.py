"""Drain a JetStream backlog with collector processes and measure it (bench_collector, bench_city).

Each collector runs in a process of its own (``python bench/drain.py --worker ...``), so two
of them use two cores and the code measured can be another commit's (``--code-root``: the
``collector`` and ``urbansense`` packages of a ``git archive``, imported before this tree's).
A worker connects its store, says ``ready``, starts its collector on ``go`` and stops on
``stop``, then prints its own figures. The parent times the drain from ``go`` until the
durable consumer has nothing pending or unacknowledged (a collector acknowledges only after
its commit, so that is when everything is stored) and reads the CPU time of the collector
processes, of every PostgreSQL process (the backends, the WAL writer, the checkpointer) and of
the NATS nodes from /proc: on a shared machine the CPU-seconds per reading are the figure that
load does not move much, the wall time is what a reader waits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """utime + stime of one process, 0.0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) * _TICK_S


def family_cpu_s(parent: int) -> float:
    """CPU time of a process and of its live children (PostgreSQL: the postmaster, its
    backends, WAL writer, checkpointer; each child is a session of its own, so not a group)."""
    total = cpu_s(parent)
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            total += (int(fields[11]) + int(fields[12])) * _TICK_S
    return total


def fresh_database(pg: Any, name: str) -> str:
    """A new empty database on ``pg``; its DSN (each measured run gets its own)."""
    import psycopg

    with psycopg.connect(pg.dsn.replace("dbname=urbansense", "dbname=postgres"), autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name}")
        c.execute(f"CREATE DATABASE {name} OWNER urbansense")
    return pg.dsn.replace("dbname=urbansense", f"dbname={name}")


async def drain(*, servers: list[str], store_url: str, durable: str, workers: int = 1,
                code_root: Path | None = None, pin_core: int | None = None, max_messages: int = 1024,
                pg_pid: int | None = None, nats_pids: list[int] | None = None,
                stream: str = "URBANSENSE", timeout_s: float = 3600.0) -> dict[str, Any]:
    """Run ``workers`` collectors on the durable ``durable`` until the stream's backlog is
    stored; their summed figures and the CPU time of each party."""
    import nats

    procs = []
    for i in range(workers):
        argv = [sys.executable, str(HERE), "--worker", "--servers", ",".join(servers),
                "--store", store_url, "--durable", durable, "--id", f"{durable}-{i}",
                "--max-messages", str(max_messages)]
        if code_root is not None:
            argv += ["--code-root", str(code_root)]
        if pin_core is not None:
            argv += ["--pin", str(pin_core)]
        procs.append(await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE))
    try:
        ready = [json.loads(await asyncio.wait_for(p.stdout.readline(), 120)) for p in procs]  # type: ignore[union-attr]
        nc = await nats.connect(servers=servers)
        js = nc.jetstream(timeout=10)

        def snapshot() -> tuple[float, float, float, float]:
            return (sum(cpu_s(p.pid) for p in procs),
                    family_cpu_s(pg_pid) if pg_pid else 0.0,
                    sum(cpu_s(b) for b in (r.get("backend_pid") for r in ready) if b),
                    sum(cpu_s(n) for n in nats_pids or []))

        cpu0, t0 = snapshot(), time.monotonic()
        for p in procs:
            p.stdin.write(b"go\n")  # type: ignore[union-attr]
        deadline = t0 + timeout_s
        while True:
            await asyncio.sleep(0.1)
            try:
                info = await js.consumer_info(stream, durable)
            except Exception:  # the consumer is created by the first worker's start
                continue
            if info.num_pending == 0 and info.num_ack_pending == 0 and info.delivered.stream_seq > 0:
                break
            if any(p.returncode is not None for p in procs):
                raise RuntimeError("a collector process exited during the drain")
            if time.monotonic() > deadline:
                raise TimeoutError(f"backlog not drained in {timeout_s} s: {info}")
        wall_s, cpu1 = time.monotonic() - t0, snapshot()
        await nc.close()
        for p in procs:
            p.stdin.write(b"stop\n")  # type: ignore[union-attr]
        figures = [json.loads(await asyncio.wait_for(p.stdout.readline(), 120)) for p in procs]  # type: ignore[union-attr]
    finally:
        for p in procs:
            if p.returncode is None:
                with_timeout = asyncio.wait_for(p.wait(), 30)
                try:
                    await with_timeout
                except TimeoutError:
                    p.kill()
                    await p.wait()
    stored = sum(f["stored"] for f in figures)
    col_s, pg_s, backend_s, nats_s = (b - a for a, b in zip(cpu0, cpu1, strict=True))
    out: dict[str, Any] = {
        "collectors": workers, "stored": stored, "wall_s": round(wall_s, 2),
        "readings_per_s": round(stored / wall_s), "collector_cpu_s": round(col_s, 2),
        "readings_per_collector_cpu_s": round(stored / col_s) if col_s else None,
        "messages": sum(f["acked"] for f in figures), "commits": sum(f["commits"] for f in figures),
        "duplicates": sum(f["duplicates"] for f in figures),
        "commit_s": round(sum(f["commit_s"] for f in figures), 2),
        "nats_cpu_s": round(nats_s, 2), "load_average_1m": round(os.getloadavg()[0], 1),
    }
    if pg_pid:
        out |= {"postgres_cpu_s": round(pg_s, 2), "backend_cpu_s": round(backend_s, 2),
                "readings_per_postgres_cpu_s": round(stored / pg_s) if pg_s else None,
                "us_per_reading_postgres": round(pg_s / stored * 1e6, 2) if stored else None}
    out["us_per_reading_collector"] = round(col_s / stored * 1e6, 2) if stored else None
    if any("slow_receptions" in f for f in figures):
        out["slow_receptions"] = sum(f.get("slow_receptions", 0) for f in figures)
    return out


async def _worker(args: argparse.Namespace) -> None:
    import logging

    logging.basicConfig(level=logging.ERROR)  # not the NATS client's disconnect at the end
    from collector.app import Collector
    from collector.config import CollectorConfig, SourceConfig

    cfg = CollectorConfig(collector_id=args.id, store_url=args.store, http_port=0,
                          max_messages=args.max_messages,
                          source=SourceConfig(kind="jetstream", servers=args.servers.split(","),
                                              durable=args.durable))
    col = Collector(cfg)
    backend = None
    if hasattr(col.store, "_connection"):  # PostgreSQL: connect (and create the schema) now
        conn = await asyncio.to_thread(col.store._connection)
        backend = conn.info.backend_pid
    loop = asyncio.get_running_loop()
    print(json.dumps({"ready": True, "backend_pid": backend}), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # go
    task = asyncio.create_task(col.run())
    await loop.run_in_executor(None, sys.stdin.readline)  # stop
    await col.stop()
    await task
    m = col.metrics
    print(json.dumps({"stored": m.stored.total(), "acked": m.acked.total(), "commits": m.commits.total(),
                      "duplicates": m.duplicates.total(), "commit_s": m.commit_seconds.sum,
                      "slow_receptions": getattr(col.store, "slow_receptions", 0)}), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--worker", action="store_true", required=True)
    p.add_argument("--servers", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--durable", required=True)
    p.add_argument("--id", required=True)
    p.add_argument("--max-messages", type=int, default=1024)
    p.add_argument("--code-root", default="")
    p.add_argument("--pin", type=int, default=None)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.code_root:
        sys.path.insert(0, args.code_root)  # another commit's collector and urbansense first
    if args.pin is not None:
        os.sched_setaffinity(0, {args.pin})
    asyncio.run(_worker(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
