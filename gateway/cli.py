"""``urbansense gateway run|status``: the only place that configures logging."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import urllib.error
import urllib.request
from typing import Any

from gateway.errors import ConfigError


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("gateway", help="run the gateway or query a running one")
    sub = p.add_subparsers(dest="gateway_command", metavar="ACTION", required=True)
    run = sub.add_parser("run", help="run the gateway service")
    run.add_argument("--config", required=True, help="path of gateway.toml")
    run.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    run.set_defaults(handler=_run)
    ck = sub.add_parser("check", help="check a config and every file it names, then exit")
    ck.add_argument("--config", required=True, help="path of gateway.toml")
    ck.set_defaults(handler=_check)
    st = sub.add_parser("status", help="print a running gateway's status")
    st.add_argument("--config", help="read the HTTP address from this gateway.toml")
    st.add_argument("--url", help="status endpoint (default http://127.0.0.1:9105)")
    st.add_argument("--json", action="store_true", help="print the raw JSON")
    st.set_defaults(handler=_status)


class _KeyValueFormatter(logging.Formatter):
    """key=value lines, journald-friendly: no timestamp (journald adds one), level first."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        line = f"level={record.levelname.lower()} logger={record.name} {msg}"
        if record.exc_info:
            line += " exc=" + json.dumps(self.formatException(record.exc_info))
        return line


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("gateway.mqtt").setLevel(max(logging.WARNING, root.level))


def _run(args: argparse.Namespace) -> int:
    _setup_logging(args.log_level)
    from gateway.app import Gateway
    from gateway.config_toml import load_config

    try:
        config = load_config(args.config)
        gw = Gateway(config)
    except ConfigError as exc:
        logging.getLogger("gateway").error("event=config_error key=%s problem=%s", exc.key, json.dumps(exc.problem))
        print(f"config error: {exc.key}: {exc.problem}", file=sys.stderr)
        return 2

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(gw.stop()))
        loop.add_signal_handler(signal.SIGHUP, gw.reload)
        await gw.run()

    asyncio.run(main())
    return 0


def _check(args: argparse.Namespace) -> int:
    """What ``run`` checks before it starts (config, every named file, the registry), as the
    user that runs it: exit 0 and "ok", or 2 and the key with the problem."""
    from gateway.config_toml import load_config
    from gateway.registry import load_registry

    try:
        config = load_config(args.config)
        config.check_files()
        registry = load_registry(config.registry)
    except ConfigError as exc:
        print(f"config error: {exc.key}: {exc.problem}", file=sys.stderr)
        return 2
    print(f"ok: {args.config} ({len(registry)} nodes, {len(config.mqtt.brokers)} brokers)")
    return 0


def _status(args: argparse.Namespace) -> int:
    url = args.url
    if url is None and args.config:
        from gateway.config_toml import load_config

        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            print(f"config error: {exc.key}: {exc.problem}", file=sys.stderr)
            return 2
        host = "127.0.0.1" if cfg.http.listen in ("0.0.0.0", "::", "") else cfg.http.listen
        url = f"http://{host}:{cfg.http.port}"
    url = (url or "http://127.0.0.1:9105").rstrip("/")
    try:
        with urllib.request.urlopen(url + "/api/status", timeout=5) as resp:
            status = json.load(resp)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"gateway not reachable at {url}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    b = status["broker"]
    o = status["outbox"]
    print(f"gateway   {status['site']}/{status['gateway']}  up {status['uptime_s']:.0f} s")
    print(f"broker    {'connected' if b['connected'] else 'DISCONNECTED'} {b['address']} "
          f"(MQTT {b['protocol'] or '-'}) {b['last_error'] if not b['connected'] else ''}")
    print(f"frames    in {sum(status['frames_in'].values()):.0f}  accepted {status['accepted']:.0f}  "
          f"duplicates {status['duplicates']:.0f}  rejected {status['rejections'] or 0}")
    print(f"outbox    {o['batches']:.0f} batches, {o['bytes']:.0f} B of {o['max_bytes']} B, "
          f"dropped {o['dropped_readings']:.0f}, {o['disk_bytes_per_reading']:.0f} B written/reading")
    print(f"published {status['published']['readings']:.0f} readings in "
          f"{status['published']['batches']:.0f} batches")
    for s in status["serial"]:
        print(f"serial    {s['port']} {'open' if s['open'] else 'CLOSED'}")
    if status["ble"] is not None:
        print(f"ble       {'healthy' if status['ble']['healthy'] else 'SILENT'}")
    print(f"nodes     {status.get('nodes_heard', 0)} heard of {len(status['nodes'])} registered")
    return 0
