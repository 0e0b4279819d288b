"""``urbansense registry add | list | revoke``: the site's node registry (docs/FIELD-GUIDE.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gateway.registry import REGISTRY_KINDS
from urbansense.fieldkit._cli import emit, guarded
from urbansense.fieldkit.siteregistry import SiteRegistry, parse_node_id


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("registry", help="add, list or revoke nodes in the site registry")
    sub = p.add_subparsers(dest="registry_command", metavar="ACTION", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--registry", required=True, type=Path,
                        help="the site registry file (the gateway's gateway.registry)")
        sp.add_argument("--json", action="store_true", help="print the result as JSON")

    add = sub.add_parser("add", help="register a node and generate its key (never printed)")
    common(add)
    add.add_argument("--kind", required=True, choices=REGISTRY_KINDS)
    add.add_argument("--node-id", help="the id to use (default: the next free one)")
    add.add_argument("--board", help="board name, recorded for the technician")
    add.set_defaults(handler=guarded(_add))
    ls = sub.add_parser("list", help="list the registered nodes (never their keys)")
    common(ls)
    ls.set_defaults(handler=guarded(_list))
    rv = sub.add_parser("revoke", help="stop serving a node: its frames are rejected as revoked")
    common(rv)
    rv.add_argument("--node", required=True, help="node id (decimal, or 8 hex digits as the gateway shows)")
    rv.set_defaults(handler=guarded(_revoke))


def _add(args: argparse.Namespace) -> int:
    extra = {"board": args.board} if args.board else None
    node_id = parse_node_id(args.node_id) if args.node_id else None
    rec, _key = SiteRegistry(args.registry).add(args.kind, node_id=node_id, extra=extra)
    emit(args, {"ok": True, **rec},
         f"added node {rec['node_id']} ({rec['node']}), {rec['kind']}; the gateway picks it up "
         "within a second (or at once on SIGHUP)")
    return 0


def _list(args: argparse.Namespace) -> int:
    recs = SiteRegistry(args.registry).nodes()
    if args.json:
        emit(args, {"ok": True, "nodes": recs}, "")
        return 0
    print(f"{'id':>10}  {'node':8}  {'kind':8}  {'board':16}  {'added':10}  status")
    for r in recs:
        status = f"REVOKED {r.get('revoked_on', '')}" if r["revoked"] else "active"
        print(f"{r['node_id']:>10}  {r['node']}  {r['kind']:8}  {r.get('board', '-'):16}  "
              f"{r.get('added', '-'):10}  {status}")
    print(f"{sum(not r['revoked'] for r in recs)} active, {sum(r['revoked'] for r in recs)} revoked")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    rec, now = SiteRegistry(args.registry).revoke(parse_node_id(args.node))
    emit(args, {"ok": True, "changed": now, **rec},
         f"node {rec['node_id']} ({rec['node']}) " + ("revoked" if now else "was already revoked")
         + "; the gateway rejects its frames as revoked_node")
    return 0
