"""``urbansense collector run --config collector.toml`` and ``urbansense collector status``."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import urllib.error
import urllib.request
from typing import Any


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("collector", help="store the gateways' readings in a database (city tier)")
    sub = p.add_subparsers(dest="collector_command", metavar="ACTION")
    run = sub.add_parser("run", help="run a collector (docs/CITY.md)")
    run.add_argument("--config", required=False, default=None,
                     help="collector.toml (default: MQTT on 127.0.0.1:1883 into ./collector.db)")
    run.add_argument("--log-level", default="INFO")
    run.set_defaults(handler=_run)
    st = sub.add_parser("status", help="a running collector's figures, from its HTTP port")
    st.add_argument("--url", default=None, help="default http://127.0.0.1:9106")
    st.add_argument("--config", default=None, help="read the HTTP port from this collector.toml")
    st.add_argument("--json", action="store_true")
    st.set_defaults(handler=_status)
    p.set_defaults(handler=lambda _a: (p.print_help(), 2)[1])


def _run(args: argparse.Namespace) -> int:
    from gateway.cli import _setup_logging

    _setup_logging(args.log_level)
    from collector.app import Collector
    from collector.config import CollectorConfig, CollectorConfigError, load_config

    try:
        cfg = load_config(args.config) if args.config else CollectorConfig()
    except CollectorConfigError as exc:
        print(f"config error: {exc.key}: {exc.problem}", file=sys.stderr)
        return 2

    async def main() -> None:
        collector = Collector(cfg)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(collector.stop()))
        await collector.run()

    asyncio.run(main())
    return 0


def _status(args: argparse.Namespace) -> int:
    url = args.url
    if url is None and args.config:
        from collector.config import CollectorConfigError, load_config

        try:
            cfg = load_config(args.config)
        except CollectorConfigError as exc:
            print(f"config error: {exc.key}: {exc.problem}", file=sys.stderr)
            return 2
        host = "127.0.0.1" if cfg.http_listen in ("0.0.0.0", "::", "") else cfg.http_listen
        url = f"http://{host}:{cfg.http_port}"
    url = (url or "http://127.0.0.1:9106").rstrip("/")
    try:
        with urllib.request.urlopen(url + "/api/status", timeout=5) as resp:
            s = json.load(resp)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"collector not reachable at {url}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    src, st = s["source"], s["store"]
    print(f"collector {s['collector']}  up {s['uptime_s']:.0f} s")
    print(f"source    {src['kind']} {'connected' if src['connected'] else 'DISCONNECTED'} {src['server'] or '-'}"
          f"  pending {s['pending']:.0f}")
    print(f"store     {st['dialect']} {'ok' if st['ok'] else 'UNAVAILABLE ' + st['last_error']}")
    print(f"readings  in {s['readings_in']:.0f}  stored {s['stored']:.0f}  duplicates {s['duplicates']:.0f}"
          f"  acked messages {s['acked']:.0f}")
    print(f"latency   p50 <= {s['latency_s']['p50']} s  p99 <= {s['latency_s']['p99']} s")
    print(f"dead      {sum(s['dead_letters'].values()):.0f} {s['dead_letters'] or ''}")
    return 0
