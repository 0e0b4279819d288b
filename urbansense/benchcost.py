"""RESULTS.md's "Gateway cost at a street's rates" section (issue 16), from bench_gateway's JSON.

Every figure stands beside the previous code's from the same run (``--previous REV``). The
CPU shares of BLE are projected to Pi-class cores by a per-core speed ratio with a cited
basis: 7-zip's LZMA benchmark (integer, branchy, cache-bound: the nearest of the published
per-board benchmarks to an interpreter's dispatch loop), from sbc-bench's results table for
the Pi boards and run on this machine for the x86 core. It is a ratio of one program's speed,
not CPython's: the instruction counts are the machine-independent figures.
"""

from __future__ import annotations

from typing import Any

# sbc-bench's table (https://github.com/ThomasKaiser/sbc-bench/blob/master/Results.md, the
# "7-zip" column: 4-thread MIPS averaged over 3 `7z b` runs; divided by the 4 cores, which
# understates one core, so the projections err high): Raspberry Pi 4 B at 1500 MHz (kernel
# 5.10, Raspberry Pi OS Buster, log ix.io/3EgS) 5,750; Raspberry Pi Zero 2 at 1000 MHz
# (ix.io/3E85) 3,030.
PI4_7ZIP_MIPS_PER_CORE = 5750 / 4
ZERO2W_7ZIP_MIPS_PER_CORE = 3030 / 4
# This machine's core: `taskset -c 1 7zz b -mmt1` (7-Zip 26.02, Debian package 7zip), the
# "Tot" line's rating per 100 % usage, best of three (2,872, 2,856, 2,932) on 2026-12-07 01:45
# UTC while other engineers' jobs ran (an AMD EPYC, 2 cores, load 8.6): a loaded figure, so
# the ratios below may err low.
X86_7ZIP_MIPS_1T = 2932.0
# The assumption of the previous rounds (Geekbench-class single-core ratios, not sourced):
# kept beside the measured basis as the pessimistic bracket.
PI4_SLOWDOWN_ASSUMED = 4.0
ZERO2W_SLOWDOWN_ASSUMED = 12.0


def slowdowns() -> dict[str, float]:
    return {"pi4": X86_7ZIP_MIPS_1T / PI4_7ZIP_MIPS_PER_CORE,
            "zero2w": X86_7ZIP_MIPS_1T / ZERO2W_7ZIP_MIPS_PER_CORE}


def cost_section(d: dict[str, Any] | None, ble_run: dict[str, Any] | None = None) -> list[str]:
    """Issue 16's figures, each beside the previous code's from the same run."""
    from urbansense.bench import _fmt, _get

    if d is None or "error" in d or not d.get("previous"):
        return []
    v = d.get("variants", {})
    lines = ["## Gateway cost at a street's rates", "",
             f"Each figure beside the same phase run on commit `{d['previous']}` (the previous figure) "
             "in the same run.", "",
             f"Command: `{d.get('command')}` ({d.get('date_utc')}; {_get(d, 'machine', 'cpu_model')}, load "
             f"average at the end {d.get('load_average_at_end')} on {_get(d, 'machine', 'cpus')} cores shared "
             "by seven engineers: the µs figures are noisy, the instruction and byte counts are not).", ""]
    ours, prev = _get(d, "throughput", "ours") or {}, v.get("throughput_previous") or {}
    base = _get(d, "throughput", "baseline_json") or {}
    if ours and prev:
        peer = base.get("broker_wire_bytes_per_reading")
        lines += ["| figure | now | previous | JSON peer (one message per reading) |", "|---|---|---|---|"]
        for label, key in (("bytes to the broker per reading (MQTT wire)", "broker_wire_bytes_per_reading"),
                           ("SenML payload bytes per reading", "broker_payload_bytes_per_reading"),
                           ("bytes written to disk per reading, full batches (write(2))",
                            "disk_write_syscall_bytes_per_reading"),
                           ("CPU µs per reading, full speed (noisy: shared machine)", "cpu_us_per_frame")):
            p = peer if key == "broker_wire_bytes_per_reading" else None
            lines.append(f"| {label} | {_fmt(ours.get(key))} | {_fmt(prev.get(key))} | "
                         f"{_fmt(p) + f' ({p / ours[key]:.2f}x ours)' if p else ''} |")
        lines.append("")
    cs, csp = d.get("cpu_share") or {}, v.get("cpu_share_previous") or {}
    if cs and csp:
        lines += [f"A lone frame (one commit, 1 frame per batch): {_fmt(cs.get('disk_bytes_per_frame_unbatched'))} "
                  f"bytes written (previous {_fmt(csp.get('disk_bytes_per_frame_unbatched'))}); at 1 frame/s "
                  f"that is {_fmt((cs.get('disk_bytes_per_frame_unbatched') or 0) * 3600 / 1e6)} MB an hour.", ""]
    lines += _serial_rows(d, v)
    ble = _ble(ble_run if ble_run is not None else d)
    if ble:
        lines += [*ble, ""]
    return lines


def _serial_rows(d: dict[str, Any], v: dict[str, Any]) -> list[str]:
    from urbansense.bench import _fmt

    rows = []
    for tag, label, key in (("", "x86 CPU µs per reading", "cpu_us_per_reading"),
                            ("_callgrind", "instructions per reading, net of idle", "instructions_per_reading_net_of_idle"),
                            ("_callgrind", "instructions per reading, with the idle cost at the rate",
                             "instructions_per_reading_with_idle_at_rate")):
        now, was = d.get("serial_rates") if not tag else v.get("serial_rates" + tag), v.get("serial_rates_previous" + tag)
        if not now or not was or "error" in now or "error" in was:
            continue
        for rate in ("rate_full", "rate_500", "rate_100"):
            a, b = (now.get(rate) or {}).get(key), (was.get(rate) or {}).get(key)
            fa, fb = (now.get("rate_full") or {}).get(key), (was.get("rate_full") or {}).get(key)
            rows.append(f"| {label} | {rate[5:]} | {_fmt(a)} | {_fmt(b)} | "
                        f"{_fmt(a / fa, 2) if a and fa else 'n/a'}x | {_fmt(b / fb, 2) if b and fb else 'n/a'}x |")
    if not rows:
        return []
    return ["Serial, one frame per write(2) on a pty (`serial_rates`; under callgrind time is dilated 30x "
            "and the instructions of an idle window as long, the bench's polling included, are taken off; "
            "the last rows add the gateway's idle instructions per second back, spread over a second's "
            "readings at that rate):", "",
            "| figure | rate (frames/s) | now | previous | now / full speed | previous / full speed |",
            "|---|---|---|---|---|---|", *rows, ""]


def _ble(run: dict[str, Any]) -> list[str]:
    """The BLE street: x86 share, instructions, and the per-core projections with their basis."""
    from urbansense.bench import _fmt

    ble = run.get("ble_foreign") or {}
    if not ble or "error" in ble:
        return []
    v = run.get("variants", {})
    was = v.get("ble_foreign_previous") or {}
    cg, cgp = v.get("ble_foreign_callgrind") or {}, v.get("ble_foreign_previous_callgrind") or {}
    share, share_p = ble.get("x86_cpu_share_pct") or 0.0, was.get("x86_cpu_share_pct")
    slow = slowdowns()
    out = [f"BLE (`{run.get('command')}`, {run.get('date_utc')}, load average at the end "
           f"{run.get('load_average_at_end')}): {_fmt(ble.get('node_frames_per_s'), 2)} node frames/s (1,000 nodes, "
           f"50 a day) heard {ble.get('repeats_per_frame')} times each plus {_fmt(ble.get('foreign_adverts_per_s'), 0)} "
           f"foreign adverts/s, sent by another process to the datagram backend for {_fmt(ble.get('window_s'), 0)} s:", "",
           "| figure | now | previous |", "|---|---|---|",
           f"| x86 CPU share of the street (noisy) | {_fmt(share, 2)} % | {_fmt(share_p, 2)} % |",
           f"| x86 CPU µs per advert (noisy) | {_fmt(ble.get('x86_cpu_us_per_advert'))} | "
           f"{_fmt(was.get('x86_cpu_us_per_advert'))} |"]
    for label, key in (("instructions per second of the street", "instructions_per_street_second"),
                       ("instructions per advert, net of idle", "instructions_per_advert_net_of_idle"),
                       ("instructions per foreign advert (heard and dropped), net of idle",
                        "instructions_per_foreign_advert_net_of_idle"),
                       ("gateway idle instructions per second", "idle_instructions_per_s")):
        if key in cg:
            out.append(f"| {label} | {_fmt(cg.get(key), 0)} | {_fmt(cgp.get(key), 0)} |")
    out += ["", f"Per Pi-class core: {_fmt(share * slow['pi4'], 1)} % of a Pi 4 core (Cortex-A72, 1.5 GHz) and "
            f"{_fmt(share * slow['zero2w'], 1)} % of a Pi Zero 2 W core (Cortex-A53, 1.0 GHz): the x86 share times "
            f"{_fmt(slow['pi4'], 2)} and {_fmt(slow['zero2w'], 2)}, this core's 7-zip single-thread MIPS "
            f"({_fmt(X86_7ZIP_MIPS_1T, 0)}) over a Pi 4's and a Zero 2 W's per core ({_fmt(PI4_7ZIP_MIPS_PER_CORE, 0)}, "
            f"{_fmt(ZERO2W_7ZIP_MIPS_PER_CORE, 0)}: sbc-bench's results table, "
            "https://github.com/ThomasKaiser/sbc-bench/blob/master/Results.md, 4-thread figures over 4). With the "
            f"previous rounds' unsourced assumption ({_fmt(PI4_SLOWDOWN_ASSUMED, 0)}x and "
            f"{_fmt(ZERO2W_SLOWDOWN_ASSUMED, 0)}x): {_fmt(share * PI4_SLOWDOWN_ASSUMED, 1)} % and "
            f"{_fmt(share * ZERO2W_SLOWDOWN_ASSUMED, 1)} %."]
    return out
