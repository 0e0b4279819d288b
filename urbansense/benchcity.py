"""The city tier's sections of bench/RESULTS.md: the collector's backlog drain (bench_collector)
and the day of a city through the cluster (bench_city), rendered from their JSON."""

from __future__ import annotations

from typing import Any


def _us(d: dict[str, Any], key: str) -> str:
    from urbansense.bench import _fmt

    return _fmt(d.get(key), 1)


def collector_section(d: dict[str, Any] | None) -> list[str]:
    from urbansense.bench import _fmt, _header

    lines = _header("City tier: collector", d)
    if d is None or "error" in d:
        return lines
    pg, lite, lat = d.get("postgres", {}), d.get("sqlite", {}), d.get("latency", {})
    ppg, plite, many = d.get("previous_postgres", {}), d.get("previous_sqlite", {}), d.get("postgres_many", {})
    prev = d.get("previous")
    lines += [
        f"A backlog of readings ({_fmt(d.get('frames_per_pack'))} frames per pack) in the JetStream stream "
        "of a private 3-node cluster, drained by one collector process pinned to core 0 (PostgreSQL and "
        "the NATS nodes on every core), then by two unpinned collector processes. CPU time from /proc: "
        "the collector process, every PostgreSQL process (backends, WAL writer, checkpointer)."
        + (f" The previous figure is the collector of commit `{prev}`, run turn about with this one in "
           "the same run, each on a fresh database and backlog." if prev else ""),
        "",
        "| figure | PostgreSQL | " + ("PostgreSQL, previous | " if prev else "") + "SQLite | "
        + ("SQLite, previous |" if prev else ""),
        "|---|---|" + ("---|" if prev else "") + "---|" + ("---|" if prev else ""),
    ]

    def row(name: str, key: str, nd: int = 0) -> str:
        cells = [pg, ppg, lite, plite] if prev else [pg, lite]
        return f"| {name} | " + " | ".join(_fmt(c.get(key), nd) if c.get(key) is not None else "-"
                                           for c in cells) + " |"

    lines += [
        row("readings stored per second, wall clock (floor 50,000 into PostgreSQL: "
            f"{'met' if d.get('meets_floor_pg') else 'NOT met'})", "readings_per_s"),
        row("readings per CPU-second of the collector", "readings_per_collector_cpu_s"),
        row("collector CPU µs per reading", "us_per_reading_collector", 1),
        row("readings per CPU-second of PostgreSQL", "readings_per_postgres_cpu_s"),
        row("PostgreSQL CPU µs per reading", "us_per_reading_postgres", 1),
        row("readings drained", "readings"),
        row("wall s", "wall_s", 2),
        row("load average (1 min) at the end", "load_average_1m", 1),
        "",
    ]
    if many:
        lines += [f"Two collector processes into PostgreSQL: {_fmt(many.get('readings_per_s'))} readings/s, "
                  f"{_us(many, 'us_per_reading_collector')} µs of collector CPU and "
                  f"{_us(many, 'us_per_reading_postgres')} µs of PostgreSQL CPU per reading "
                  f"(load average {_fmt(many.get('load_average_1m'))}).", ""]
    lines += [f"A day of a 300,000-inhabitant city (10 million readings) drains into PostgreSQL in "
              f"{_fmt(d.get('day_of_10m_readings_drains_in_s'))} s at the wall-clock rate above.", ""]
    if lat:
        lines += [f"Gateway receive to database commit, a real gateway at default batching (batch max age "
                  f"{_fmt(lat.get('gateway_batch_max_age_s'))} s) through the cluster's MQTT listener, "
                  f"{_fmt(lat.get('frames_per_s'), 0)} frames/s: p50 {_fmt(lat.get('p50_ms'))} ms, "
                  f"p99 {_fmt(lat.get('p99_ms'))} ms ({_fmt(lat.get('stored'))} of {_fmt(lat.get('frames'))} "
                  "frames stored).", ""]
    if d.get("load_average_1m") is not None:
        lines += [f"Load average (1 min) of the machine when the run started: {d['load_average_1m']} "
                  f"on {d.get('cores')} cores.", ""]
    return lines


def city_section(d: dict[str, Any] | None) -> list[str]:
    from urbansense.bench import _fmt, _header

    lines = _header("City tier: a day of the city through the cluster", d)
    if d is None or "error" in d:
        return lines
    dr, led = d.get("drain", {}), d.get("ledger", {})
    lines += [
        f"{_fmt(d.get('nodes'))} nodes (40 % parking, 20 % bins, 40 % water), {_fmt(d.get('gateways'))} "
        f"gateways with overlapping coverage, one day: {_fmt(d.get('frames'))} frames, "
        f"{_fmt(d.get('receptions'))} receptions in {_fmt(d.get('messages'))} packs "
        f"({_fmt(d.get('frames_per_message'), 2)} frames per pack at the gateways' default batching), "
        f"published into the 3-node cluster in {_fmt(d.get('publish_s'))} s, then drained by "
        f"{_fmt(d.get('collectors'))} collector processes (batch.max_messages "
        f"{_fmt(d.get('max_messages'))}) into PostgreSQL. **Ledger: {'passed' if d.get('ok') else 'FAILED'}.**",
        "",
        "| figure | value |",
        "|---|---|",
        f"| drain wall time | {_fmt(dr.get('wall_s'))} s ({_fmt(dr.get('readings_per_s'))} readings/s) |",
        f"| collector CPU µs per stored reading (both processes) | {_us(dr, 'us_per_reading_collector')} |",
        f"| PostgreSQL CPU µs per stored reading | {_us(dr, 'us_per_reading_postgres')} |",
        f"| NATS nodes' CPU s during the drain | {_fmt(dr.get('nats_cpu_s'))} |",
        f"| commits | {_fmt(dr.get('commits'))} |",
        f"| sent / stored / missing / extra | {_fmt(led.get('sent'))} / {_fmt(led.get('stored'))} / "
        f"{_fmt(led.get('missing'))} / {_fmt(led.get('extra'))} |",
        f"| receptions sent / stored / missing | {_fmt(led.get('receptions_sent'))} / "
        f"{_fmt(led.get('receptions_stored'))} / {_fmt(led.get('receptions_missing'))} |",
        f"| wrong values / node states not at the last frame | {_fmt(led.get('wrong'))} / "
        f"{_fmt(led.get('node_state_not_latest'))} |",
        f"| load average (1 min) at the end of the drain | {_fmt(dr.get('load_average_1m'))} on "
        f"{_fmt(d.get('cores'))} cores |",
        "",
    ]
    return lines
