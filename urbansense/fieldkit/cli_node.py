"""``urbansense node ...``: flash, provision, verify, doctor (docs/FIELD-GUIDE.md)."""

from __future__ import annotations

from typing import Any


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("node", help="turn a board into a node: flash, provision, verify")
    p.add_subparsers(dest="node_command", metavar="ACTION", required=True)
