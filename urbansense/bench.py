"""``urbansense bench``: run every benchmark in bench/ and write bench/RESULTS.md.

Each benchmark is a script that prints one JSON object; this runner records the machine,
the date and the exact command beside every figure, and puts each figure next to its peer
measured in the same run (the JSON-per-reading baseline, the 31-byte advertising limit ...).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from urbansense.benchcity import city_section, collector_section
from urbansense.benchcost import cost_section

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"

_DEMO = ["demo", "--nodes", "1000", "--speed", "60", "--json", "--no-plots", "--out", "build/bench-demo"]
# name -> (module, full args, quick args)
BENCHES: dict[str, tuple[str, list[str], list[str]]] = {
    "gateway": ("bench.bench_gateway", [], ["--quick"]),
    "firmware": ("bench.bench_firmware", [], []),
    "simulator": ("bench.bench_sim", [], ["--nodes", "1000", "--duration", "6h", "--no-boards"]),
    # The gateway in the loop: 1,000 simulated nodes at 60x over ptys and the BLE backend.
    "district": ("urbansense", [*_DEMO, "--duration", "60s"], [*_DEMO, "--duration", "15s"]),
    # A blank virtual board to a verified first frame (urbansense node provision).
    "fieldkit": ("bench.bench_fieldkit", [], []),
    # The city tier: a backlog drained by one collector into PostgreSQL and SQLite, latency.
    # The previous figure: the collector of 95b70b3 (before the HOT upsert, the receptions'
    # fast path, 1,024-message batches and the one-pass reader), turn about in the same run, best of 3.
    "collector": ("bench.bench_collector", ["--previous", "95b70b3", "--rounds", "3"],
                  ["--readings", "30000", "--sqlite-readings", "10000", "--seconds", "3"]),
    # A day of 100,000 nodes through the cluster into PostgreSQL, with the ledger (several minutes).
    "city": ("bench.bench_city", [], ["--nodes", "2000"]),
    # What batch.durable_ms costs the SD card (BLE frames on disk within 1 s of receipt).
    "durable": ("bench.bench_durable", [], []),
}
# Written by `make soak` (tests/test_soak_week.py); shown, with its date, when present.
SOAK_WEEK = ROOT / "out" / "soak-week.json"


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("bench", help="run the benchmarks and write bench/RESULTS.md",
                              description=__doc__)
    p.add_argument("--quick", action="store_true", help="small runs (a smoke test of the benches)")
    p.add_argument("--only", choices=sorted(BENCHES), action="append", help="run only these")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.set_defaults(handler=_main)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = int(line.split()[1]) / 2**20
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def run_one(name: str, quick: bool) -> dict[str, Any]:
    module, full, small = BENCHES[name]
    cmd = [sys.executable, "-m", module, *(small if quick else full)]
    shown = " ".join([".venv/bin/python", "-m", module, *(small if quick else full)])
    print(f"bench: {shown}", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        return {"command": shown, "error": proc.stderr[-2000:], "wall_s": round(wall, 1)}
    try:
        data: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return {"command": shown, "error": "no JSON on stdout: " + proc.stdout[-500:]}
    data["_command"] = shown
    data["_wall_s"] = round(wall, 1)
    return data


def _get(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def _fmt(v: Any, nd: int = 1) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def render(results: dict[str, dict[str, Any]], info: dict[str, Any], quick: bool) -> str:
    out = [
        "# Benchmark results",
        "",
        f"Written by `urbansense bench{' --quick' if quick else ''}` on {info['date']}."
        + (f" This run measured only: {', '.join(info['only'])}; the other sections are the file's "
           "previous figures." if info.get("only") else ""),
        "",
        f"Machine: {info['machine']['cpu']}, {info['machine']['cores']} cores, "
        f"{info['machine']['memory_gib']} GiB, {info['machine']['os']}, Python {info['machine']['python']}.",
        "",
        "Each section gives the command that produced it; figures with a peer show both, measured in the same run.",
        "",
    ]
    out += _gateway_section(results.get("gateway"))
    out += (cost_section(results.get("gateway"), results.get("ble-foreign"))
            or cost_section(results.get("gateway-cost"), results.get("ble-foreign")))
    out += _firmware_section(results.get("firmware"))
    out += _sim_section(results.get("simulator"))
    out += _district_section(results.get("district"))
    out += fieldkit_section(results.get("fieldkit"))
    out += collector_section(results.get("collector"))
    out += city_section(results.get("city"))
    out += _durable_section(results.get("durable"))
    out += soak_section(SOAK_WEEK)
    out += ["## Raw results", ""]
    for name, data in results.items():
        out += [f"<details><summary>{name}</summary>", "", "```json",
                json.dumps(data, indent=1, sort_keys=True), "```", "", "</details>", ""]
    return "\n".join(out) + "\n"


def _header(title: str, data: dict[str, Any] | None) -> list[str]:
    lines = [f"## {title}", ""]
    if data is None:
        return [*lines, "Not run.", ""]
    lines += [f"Command: `{data.get('command') or data.get('_command')}`", ""]
    if "error" in data:
        lines += ["Failed:", "", "```", str(data["error"]), "```", ""]
    return lines


def _gateway_section(d: dict[str, Any] | None) -> list[str]:
    lines = _header("Gateway", d)
    if d is None or "error" in d:
        return lines
    s = d.get("summary", {})
    lines += [
        "| figure | urbansense (verify, dedup, batch, SQLite outbox, MQTT 5 QoS 1) | peer | ratio |",
        "|---|---|---|---|",
        f"| frames/s, one core, to a local mosquitto (floor 20,000: "
        f"{'met' if s.get('meets_floor_20000_frames_per_s') else 'NOT met'}) | {_fmt(s.get('frames_per_s'), 0)} | "
        f"{_fmt(s.get('baseline_json_frames_per_s'), 0)} (one JSON message per reading, QoS 1) | "
        f"{_fmt(s.get('ratio_frames_per_s_ours_over_baseline'), 2)}x |",
        f"| CPU µs per frame | {_fmt(s.get('cpu_us_per_frame'))} | {_fmt(s.get('baseline_json_cpu_us_per_frame'))} "
        f"(JSON baseline) | {_fmt(s.get('ratio_cpu_per_frame_baseline_over_ours'), 2)}x less |",
        f"| bytes on air per reading | {_fmt(s.get('on_air_frame_bytes_max'))} frame, "
        f"{_fmt(s.get('on_air_advert_bytes_max'))} advertisement | {_fmt(s.get('on_air_advert_limit_bytes'))} "
        "(legacy advertising limit) | |",
        f"| bytes to the broker per reading (MQTT wire) | {_fmt(s.get('broker_wire_bytes_per_reading'))} | "
        f"{_fmt(s.get('baseline_json_broker_wire_bytes_per_reading'))} (JSON baseline) | |",
        f"| bytes written to disk per reading, full batches | {_fmt(s.get('disk_bytes_per_reading_full_batches'))} | "
        f"{_fmt(s.get('payload_bytes_per_reading'))} (payload) | |",
        f"| bytes written to disk for a lone frame (one commit) | {_fmt(s.get('disk_bytes_per_reading_unbatched'))} | | |",
        f"| end-to-end latency p50 / p99 (ms), default batching, {_fmt(s.get('latency_rate_frames_per_s'), 0)} frames/s | "
        f"{_fmt(s.get('latency_ms_p50'))} / {_fmt(s.get('latency_ms_p99'))} | | |",
        f"| RSS MiB: idle / after sustained load / after a 1 h outage drained | {_fmt(s.get('rss_mib_gateway_idle'))} / "
        f"{_fmt(s.get('rss_mib_after_sustained'))} / {_fmt(s.get('rss_mib_after_1h_outage_drained'))} | | |",
        f"| outbox peak bytes, 1 h outage | {_fmt(s.get('outbox_peak_bytes_1h_outage'))} | | |",
        f"| projected Pi 4 CPU share per 100 nodes (x{_fmt(s.get('pi4_slowdown_assumed'))} slower core) | "
        f"{_fmt(s.get('pi4_cpu_share_pct_per_100_nodes'), 3)} % | {_fmt(s.get('pi4_idle_cpu_share_pct'), 3)} % idle | |",
        f"| SD-card bytes written per hour per 100 nodes | {_fmt(s.get('sd_bytes_written_per_hour_per_100_nodes'))} | | |",
        "",
        f"Workload and method: see the raw JSON below (`workload`, `pinning`); mode {d.get('mode')}, "
        f"{_fmt(d.get('total_wall_s'))} s.",
    ]
    return [*lines, ""]


def _firmware_section(d: dict[str, Any] | None) -> list[str]:
    lines = _header("Firmware", d)
    if d is None or "error" in d:
        return lines
    lines += [f"All modules compiled by mpy-cross (xtensawin): {_fmt(d.get('mpy_total_bytes'))} bytes of .mpy "
              f"({_fmt(d.get('py_total_bytes'))} bytes of source). VM: {d.get('vm')}.", "",
              "Heap of one wake cycle above the idle baseline. Deployed, the modules are frozen into the "
              "firmware image (bytecode in flash, `firmware/manifest.py`); the last two columns count every "
              "byte the cycle allocates with the GC disabled (garbage included), an upper bound of the peak.",
              "",
              "| kind | cold boot, frozen: peak / all allocated | deep-sleep wake, frozen: peak / all allocated "
              "| cold boot with .mpy loaded into RAM | limit |",
              "|---|---|---|---|---|"]

    def kb(v: Any) -> str:
        return "n/a" if v is None else f"{v / 1024:.1f} KB"

    for kind, h in sorted(d.get("heap", {}).items()):
        f = h.get("frozen", {})
        lines.append(f"| {kind} | {kb(f.get('cold_data_peak_bytes'))} / {kb(f.get('cold_allocated_bytes'))} | "
                     f"{kb(h.get('warm_wake_peak_bytes'))} / {kb(f.get('warm_allocated_bytes'))} | "
                     f"{kb(h.get('cold_boot_peak_bytes'))} | 40 KB |")
    return [*lines, ""]


def _sim_section(d: dict[str, Any] | None) -> list[str]:
    lines = _header("Simulator and energy", d)
    if d is None or "error" in d:
        return lines
    lines += [
        f"{_fmt(d.get('nodes'))} nodes x {_fmt((d.get('simulated_s') or 0) / 3600, 0)} h simulated in "
        f"{_fmt(d.get('wall_s'))} s of wall time on {d.get('processes')} processes of {d.get('interpreter', 'CPython')} "
        f"(target: 10,000 x 1 day < 60 s, {'met' if (d.get('wall_s') or 1e9) < 60 else 'NOT met'}): "
        f"{_fmt(d.get('wake_cycles_per_s'), 0)} node-wake-cycles/s, {_fmt(d.get('frames_sent'))} frames sent.",
        "",
    ]
    cpy = d.get("cpython_comparison") or {}
    if cpy:
        day = (d.get("wake_cycles") or 0) / (cpy.get("wake_cycles_per_s") or 1)
        lines += [f"The same shards forked on {cpy.get('interpreter')}: {_fmt((cpy.get('simulated_s') or 0) / 3600, 0)} h "
                  f"of the day in {_fmt(cpy.get('wall_s'))} s, {_fmt(cpy.get('wake_cycles_per_s'), 0)} "
                  f"node-wake-cycles/s (the whole day's cycles would take about {_fmt(day, 0)} s).", ""]
    boards = d.get("energy_per_board") or {}
    if boards:
        lines += ["Energy per node kind and board (realistic rates: parking 10 arrivals + 10 departures a day and an "
                  "hourly heartbeat; bins measured every 15 min; water hourly reports and about 150 l a day; one "
                  "3.6 V 19 Ah Li-SOCl2 cell, 1 %/year self-discharge). Targets: 12 years parking and bin, 16 water.",
                  "", "| board | kind | average current | wake cycles/day | battery life p50 (min) |", "|---|---|---|---|---|"]
        for board, kinds in sorted(boards.items()):
            for kind, e in sorted(kinds.items()):
                life = e.get("battery_life_years", {})
                lines.append(f"| {board} | {kind} | {_fmt(e.get('avg_current_ua'))} µA | {_fmt(e.get('wake_cycles_per_day'))} | "
                             f"{_fmt(life.get('p50'))} y ({_fmt(life.get('min'))} y) |")
    return [*lines, ""]


def _district_section(d: dict[str, Any] | None) -> list[str]:
    lines = _header("District with the gateway in the loop", d)
    if d is None or "error" in d:
        return lines
    sim = d.get("simulation", {})
    t = d.get("total", {})
    nodes = sum((sim.get("nodes") or {}).values())
    lines += [
        f"{_fmt(nodes)} nodes of the {sim.get('scenario')} scenario, paced at {_fmt(sim.get('speed'), 0)}x "
        f"real time through two in-process gateways (pty serial ports, bleak backend) to a private mosquitto: "
        f"achieved {_fmt(sim.get('achieved_speed'))}x ({_fmt(sim.get('simulated_s'), 0)} s simulated in "
        f"{_fmt(sim.get('sim_wall_s'))} s; the simulator and both gateways share one process).",
        "",
        "| sent | lost on air | lost at the gateway socket | delivered | missing | duplicated | wrong | undecodable |",
        "|---|---|---|---|---|---|---|---|",
        f"| {_fmt(t.get('sent'))} | {_fmt(t.get('lost_on_air'))} | {_fmt(t.get('lost_at_gateway'))} | "
        f"{_fmt(t.get('delivered'))} | {_fmt(t.get('missing'))} | {_fmt(t.get('duplicated'))} | "
        f"{_fmt(t.get('wrong'))} | {_fmt(t.get('undecodable'))} |",
    ]
    return [*lines, ""]


def fieldkit_section(d: dict[str, Any] | None) -> list[str]:
    lines = _header("Field kit: blank board to a verified first frame", d)
    if d is None or "error" in d:
        return lines
    fp, rp = d.get("first_provision", {}), d.get("reprovision", {})
    lines += [
        "A blank virtual board (the MicroPython WebAssembly VM behind a pty, fed byte by byte) "
        "provisioned with `urbansense node provision`, its own files booted on the VM, its first "
        "frame verified by a gateway that picked the node up from the registry without a restart.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| blank board to verified first frame | {_fmt(d.get('blank_to_verified_s'))} s |",
        f"| of which provision (compile, copy, verify every file, reset, self-check) | {_fmt(d.get('provision_s'))} s |",
        f"| bytes copied to a blank board | {_fmt(fp.get('bytes_copied'), 0)} in {_fmt(fp.get('files_copied'), 0)} files |",
        f"| bytes copied by a re-provision of the unchanged node | {_fmt(rp.get('bytes_copied'), 0)} "
        f"({_fmt(rp.get('files_unchanged'), 0)} files checked by SHA-256, {_fmt(d.get('reprovision_s'))} s) |",
    ]
    return [*lines, ""]


def previous_results(path: Path) -> dict[str, dict[str, Any]]:
    """The raw results an earlier run wrote into ``path`` (kept for benches not run now)."""
    out: dict[str, dict[str, Any]] = {}
    try:
        text = path.read_text()
    except OSError:
        return out
    for block in text.split("<details><summary>")[1:]:
        name, _, rest = block.partition("</summary>")
        body = rest.split("```json", 1)[-1].split("```", 1)[0]
        try:
            out[name] = json.loads(body)
        except json.JSONDecodeError:
            continue
    return out


def _durable_section(d: dict[str, Any] | None) -> list[str]:
    lines = _header("Durability: what batch.durable_ms costs the SD card", d)
    if d is None or "error" in d:
        return lines
    cols = [("staging_off_max_age_5s", "staging off, max_age_s 5 (loss window 5 s)"),
            ("durable_1000ms_max_age_5s", "durable_ms 1000 (default), max_age_s 5"),
            ("durable_1000ms_max_age_30s", "durable_ms 1000, max_age_s 30"),
            ("no_staging_max_age_1s", "no staging, max_age_s 1")]
    lines += ["Outbox bytes written (write(2)) per day for BLE frames from 30 nodes, 1 KiB pages, "
              "and frames per pack on the wire.", "",
              "| BLE frames/s | " + " | ".join(title for _, title in cols) + " |",
              "|---" * (len(cols) + 1) + "|"]
    for rate, row in d.items():
        if not isinstance(row, dict) or rate.startswith("_"):
            continue
        cells = [f"{_fmt(_get(row, k, 'mb_per_day'))} MB/day, {_fmt(_get(row, k, 'frames_per_batch'))}"
                 for k, _ in cols]
        lines.append(f"| {rate.split('_')[0]} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def soak_section(path: Path) -> list[str]:
    lines = ["## A week in the field (make soak)", ""]
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return [*lines, f"Not run here ({path.relative_to(ROOT)} absent): `make soak` writes it.", ""]
    when = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    led, faults = d.get("ledger", {}), d.get("faults", {})
    lines += [
        f"Command: `make soak` (tests/test_soak_week.py), {when}: angers-centre, {_fmt(d.get('nodes'))} nodes, "
        f"{_fmt(d.get('days'))} simulated days paced at up to {_fmt(d.get('speed'), 0)}x "
        f"({_fmt(d.get('wall_s'))} s of wall time), both gateways as processes.", "",
        "Faults: " + ", ".join(f"{k.replace('_', ' ')} {_fmt(v)}" for k, v in sorted(faults.items())) + ".", "",
        "| sent | at the broker | lost on air | gateway down or socket full | in a cut's durable_ms window "
        "| serial unacked | unexplained | wrong | invented | extra copies (same values) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        "| " + " | ".join(_fmt(led.get(k)) for k in ("sent", "at_broker", "lost_on_air", "gateway_down_or_full",
                                                      "cut_window", "serial_unacked", "unexplained", "wrong",
                                                      "invented", "copies")) + " |",
    ]
    return [*lines, ""]


def _main(args: argparse.Namespace) -> int:
    names = args.only or list(BENCHES)
    # --only: the other benches keep the figures of the run that wrote the file.
    results = {k: v for k, v in previous_results(args.out).items() if k in BENCHES} if args.only else {}
    results.update({name: run_one(name, args.quick) for name in names})
    info = {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
            "only": args.only or []}
    # The mutation-testing section (tools/mutate.py, make mutate) is measured apart: kept as is.
    kept = ""
    if args.out.exists():
        old = args.out.read_text()
        start = old.find("<!-- mutation:start")
        end = old.find("<!-- mutation:end -->")
        if 0 <= start < end:
            kept = "\n" + old[start:end + len("<!-- mutation:end -->")] + "\n"
    args.out.write_text(render(results, info, args.quick) + kept)
    print(f"bench: wrote {args.out}", file=sys.stderr)
    return 1 if any("error" in r for r in results.values()) else 0
