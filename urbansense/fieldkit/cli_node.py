"""``urbansense node ...``: provision (and the other field steps), docs/FIELD-GUIDE.md."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from urbansense.durations import duration_arg
from urbansense.fieldkit._cli import emit, guarded
from urbansense.wire.node_config import KINDS


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("node", help="turn a board into a node: flash, provision, verify, doctor")
    sub = p.add_subparsers(dest="node_command", metavar="ACTION", required=True)
    pr = sub.add_parser("provision", help="copy the firmware and a new identity to a board with MicroPython")
    pr.add_argument("--port", required=True, help="serial port of the board, e.g. /dev/ttyUSB0")
    pr.add_argument("--kind", required=True, choices=KINDS)
    pr.add_argument("--board", required=True, help="board definition in boards/, e.g. city-wroom32e")
    pr.add_argument("--site", required=True, help="site name, recorded in the registry and on the label")
    pr.add_argument("--registry", type=Path,
                    help="the site registry file (default: sites/SITE/nodes.jsonl)")
    pr.add_argument("--node-id", help="use this id (default: the next free one in the registry)")
    pr.add_argument("--transport", default="ble", choices=("ble", "serial"))
    pr.add_argument("--label-png", type=Path, help="also write the label as a QR-code PNG here")
    pr.add_argument("--json", action="store_true", help="print the result as JSON (no progress)")
    pr.set_defaults(handler=guarded(_provision))
    fl = sub.add_parser("flash", help="install the board's pinned MicroPython image (esptool; never downloads)")
    fl.add_argument("--port", required=True, help="serial port of the board, e.g. /dev/ttyUSB0")
    fl.add_argument("--board", default="city-wroom32e", help="board definition in boards/ (its pinned image)")
    fl.add_argument("--image", type=Path, help="the image file (default: firmware/images/<pinned file>)")
    fl.add_argument("--connect-mode", default="default-reset",
                    choices=("default-reset", "usb-reset", "no-reset"),
                    help="how esptool puts the chip in its bootloader (no-reset: you hold BOOT)")
    fl.add_argument("--no-stub", action="store_true",
                    help="talk to the ROM loader only (no full erase: the ROM erases what it writes)")
    fl.add_argument("--json", action="store_true", help="print the result as JSON")
    fl.set_defaults(handler=guarded(_flash))
    vf = sub.add_parser("verify", help="wait for the node's first verified frame at the gateway")
    vf.add_argument("--node", required=True, help="node id (decimal, or 8 hex digits as on the label)")
    vf.add_argument("--gateway", default="http://127.0.0.1:9105", help="the gateway's status address")
    vf.add_argument("--mqtt", metavar="HOST[:PORT]",
                    help="wait at this MQTT broker instead (every gateway's up topic); cannot name causes")
    vf.add_argument("--timeout", default=600.0, type=duration_arg, help="how long to wait (90s, 10m)")
    vf.add_argument("--port", help="also show the node's serial output from this port")
    vf.add_argument("--json", action="store_true", help="print the result as JSON")
    vf.set_defaults(handler=guarded(_verify))
    dr = sub.add_parser("doctor", help="self-test a board over the raw REPL (writes nothing unless --calibrate-empty)")
    dr.add_argument("--port", required=True, help="serial port of the board")
    dr.add_argument("--calibrate-empty", action="store_true",
                    help="parking: with the space empty, measure the magnetometer baseline and store it on the node")
    dr.add_argument("--json", action="store_true", help="print the result as JSON")
    dr.set_defaults(handler=guarded(_doctor))


class _Bar:
    """One progress line per file on a terminal; one line per copied file otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = ""

    def __call__(self, path: str, done: int, total: int) -> None:
        if self.tty:
            width = 30
            filled = width * done // max(total, 1)
            sys.stderr.write(f"\r{path:28} [{'#' * filled}{'.' * (width - filled)}] {done / 1000:6.1f} kB")
            if done >= total:
                sys.stderr.write("\n")
        elif done >= total and path != self.last:
            sys.stderr.write(f"{path} {total} B\n")
        self.last = path
        sys.stderr.flush()


def _provision(args: argparse.Namespace) -> int:
    from urbansense.fieldkit.provision import Request, label_text, provision, write_label_png
    from urbansense.fieldkit.siteregistry import parse_node_id

    registry = args.registry or Path("sites") / args.site / "nodes.jsonl"
    req = Request(port=args.port, kind=args.kind, board=args.board, site=args.site, registry=registry,
                  node_id=parse_node_id(args.node_id) if args.node_id else None, transport=args.transport)
    result = provision(req, None if args.json else _Bar())
    if args.label_png:
        write_label_png(result, args.label_png)
        result["label_png"] = str(args.label_png)
    text = (f"{label_text(result)}\n"
            f"board: {result['self_check'].get('banner', '?')}\n"
            + "".join(f"WARNING: {w}\n" for w in result["warnings"]) +
            f"copied {result['files_copied']} files ({result['bytes_copied']} B), "
            f"{result['files_unchanged']} unchanged; self-check ok (fw {result['self_check'].get('fw')})\n"
            f"next: install the board, then `urbansense node verify --node {result['node']}`")
    emit(args, result, text)
    return 0


def _flash(args: argparse.Namespace) -> int:
    from urbansense.fieldkit.flash import flash
    from urbansense.fieldkit.nodeconfig import load_board

    result = flash(args.port, load_board(args.board), args.image, use_stub=not args.no_stub,
                   connect_mode=args.connect_mode, quiet=args.json)
    emit(args, result,
         f"flashed MicroPython {result['micropython']} ({result['image']}) to the {result['chip']} "
         f"{result['mac']} at {result['offset']:#x}, verified\n"
         f"next: `urbansense node provision --port {args.port} --board {args.board} --kind KIND --site SITE`")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from urbansense.fieldkit.siteregistry import parse_node_id
    from urbansense.fieldkit.verify import wait_published, wait_verified

    node_id = parse_node_id(args.node)
    tick = None
    if args.port:
        import serial

        try:
            log_port = serial.Serial(args.port, 115200, timeout=0)
        except (serial.SerialException, OSError) as exc:
            from urbansense.fieldkit import FieldError

            raise FieldError(f"cannot open {args.port} for the node's log: {exc}",
                             "leave out --port, or close the program that holds it") from None

        def tick() -> None:
            data = log_port.read(4096)
            if data and not args.json:
                sys.stderr.write(data.decode("utf-8", "replace"))

    where = args.mqtt or args.gateway
    if not args.json:
        print(f"waiting for node {node_id:08x} at {where} ...", file=sys.stderr)
    try:
        if args.mqtt:
            seen = wait_published(args.mqtt, node_id, args.timeout, on_tick=tick)
        else:
            seen = wait_verified(args.gateway, node_id, args.timeout, on_tick=tick)
    finally:
        if args.port:
            log_port.close()
    emit(args, {"ok": True, "node_id": node_id, "node": f"{node_id:08x}", **seen},
         f"node {node_id:08x} verified: {seen.get('frames')} frame(s), last via {seen.get('transport')}"
         + (f", RSSI {seen['rssi_dbm']} dBm" if seen.get("rssi_dbm") is not None else ""))
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from urbansense.fieldkit.doctor import doctor

    res = doctor(args.port, calibrate_empty=args.calibrate_empty)
    hw = res["hardware"]
    lines = [f"board on {args.port}: {res['self_check'].get('version', '?')}",
             f"node {res['self_check'].get('node_id', '?')} {res['kind']}, firmware {res['self_check'].get('fw', '?')}",
             f"heap free {hw.get('heap_free')} B, flash free {hw.get('flash_free')} B"]
    if res["frozen"] is not None:
        lines.append(f"firmware frozen in the image (source stamp {str(res['frozen'].get('source'))[:12]})")
    for k in ("i2c", "field_nt", "distance_mm", "battery_mv", "wake_pins", "rtc_memory_bytes", "rtc_state", "nvs",
              "nvs_fcnt_reserved", "hardware"):
        if k in hw:
            lines.append(f"{k}: {hw[k]}")
    if "baseline_nt" in hw:
        lines.append(f"empty-space baseline stored: {hw['baseline_nt']} nT (applied at the node's next boot)")
    lines += [f"PROBLEM: {p}" for p in res["problems"]] or ["no problems found"]
    emit(args, res, "\n".join(lines))
    return 0 if res["ok"] else 1
