"""The bench's view of the machine: pinning, a process's memory and I/O counters, what it runs on.

Contract: ``pin_self`` puts the calling process on ``GATEWAY_CPU`` (the measured core) and
``pin_pid_side`` puts another process (mosquitto, the latency subscriber, a serial writer or BLE
sender) on ``SIDE_CPU`` when the machine has one, on the measured core otherwise; both return
the CPUs the process ended up on. ``proc_status_kb``/``rss_mib``/``proc_io`` read
``/proc/<pid>/status`` and ``/proc/self/io`` (0 when a field or the file is missing);
``cpu_model`` and ``mosquitto_version`` name what the figures were measured on.

Why a module of its own: every gateway phase (bench_gateway, bench_cost, bench_ble) pins the
same way and reads the same counters, and the figures are only comparable if they all do. Only
the standard library is imported at module level, so a phase child can still put another
tree's gateway first on ``sys.path`` (``--previous``) after loading this.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from pathlib import Path

GATEWAY_CPU = 0
SIDE_CPU = 1  # broker + subscriber, when the machine has a second CPU


def proc_status_kb(field: str, pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def rss_mib() -> float:
    return round(proc_status_kb("VmRSS") / 1024, 2)


def proc_io(field: str) -> int:
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pin_self() -> list[int]:
    os.sched_setaffinity(0, {GATEWAY_CPU})
    return sorted(os.sched_getaffinity(0))


def side_cpus() -> set[int]:
    return {SIDE_CPU} if (os.cpu_count() or 1) > SIDE_CPU else {GATEWAY_CPU}


def pin_pid_side(pid: int) -> list[int]:
    cpus = side_cpus()
    with contextlib.suppress(OSError):
        os.sched_setaffinity(pid, cpus)
    return sorted(os.sched_getaffinity(pid))


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def mosquitto_version() -> str:
    with contextlib.suppress(Exception):
        from urbansense.broker import find_tool

        p = subprocess.run([find_tool("mosquitto"), "-h"], capture_output=True, text=True, timeout=5)
        first = (p.stdout or p.stderr).splitlines()[0]
        return first.strip()
    return ""
