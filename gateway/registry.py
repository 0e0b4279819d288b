"""The node registry: which nodes this gateway serves, their kind and their root key.

File format (JSON lines, one node per line, ``#`` comments allowed), written by provisioning
with ``write_registry`` (mode 0600):

    {"node_id": 305419896, "kind": "parking", "key": "00112233445566778899aabbccddeeff"}
    {"node_id": 2, "kind": "water", "key_file": "keys/00000002.key", "report_interval_s": 3600}
    {"node_id": 3, "kind": "bin", "key": "...", "revoked": true}

A revoked node stays in the file (its id is never given out again) but is not served: its
frames are rejected as ``revoked_node``, not ``unknown_node``, so a stolen or retired board
shows up as such in the counters. ``key`` is 32 hex digits; ``key_file`` (relative to the registry) holds the same hex. Any file
holding a key must be 0600 (or 0400): any group or world bit is refused. Keys are never logged
nor repr'd.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config import check_secret_file
from gateway.errors import ConfigError
from urbansense.wire.node_config import KINDS
from urbansense.wire.protocol import NodeKeys

# A registry may also list nodes of other firmware ("other"): the kind labels metrics and events.
REGISTRY_KINDS = (*KINDS, "other")


@dataclass(slots=True)
class Node:
    node_id: int
    kind: str
    keys: NodeKeys = field(repr=False)
    report_interval_s: float | None = None


@dataclass(slots=True)
class NodeSpec:
    """What provisioning writes for one node."""

    node_id: int
    kind: str
    key: bytes = field(repr=False)
    report_interval_s: float | None = None

    def __repr__(self) -> str:
        return f"NodeSpec(node_id={self.node_id}, kind={self.kind!r}, key=<redacted>)"


class Registry:
    """The nodes served (``get``) and the revoked ids. Shared by every stage: ``replace``
    swaps the contents in place, so a reload reaches them all at once (gateway/registry_watch.py)."""

    __slots__ = ("_nodes", "_revoked")

    def __init__(self, nodes: Iterable[Node] = (), revoked: Iterable[int] = ()) -> None:
        self._nodes = {n.node_id: n for n in nodes}
        self._revoked = frozenset(revoked)

    def get(self, node_id: int) -> Node | None:
        """The node if it is served (registered and not revoked), else None."""
        return self._nodes.get(node_id)

    def is_revoked(self, node_id: int) -> bool:
        return node_id in self._revoked

    def revoked(self) -> frozenset[int]:
        return self._revoked

    def replace(self, other: Registry) -> tuple[list[int], list[int], list[int]]:
        """Take ``other``'s contents -> (added, removed, newly revoked) node ids. Dicts are
        swapped, not mutated: a stage iterating the old one is not disturbed."""
        added = [n for n in other._nodes if n not in self._nodes]
        removed = [n for n in self._nodes if n not in other._nodes]
        newly = [n for n in other._revoked if n not in self._revoked]
        self._nodes = dict(other._nodes)
        self._revoked = other._revoked
        return added, removed, newly

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterable[Node]:
        return iter(self._nodes.values())

    def nodes(self) -> list[Node]:
        return list(self._nodes.values())

    def __repr__(self) -> str:
        return f"Registry({len(self._nodes)} nodes)"


def _parse_key(text: str, where: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise ConfigError(where, "key must be 32 hex digits") from None
    if len(key) != 16:
        raise ConfigError(where, "key must be 32 hex digits (16 bytes)")
    return key


def load_registry(path: Path) -> Registry:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("gateway.registry", f"file not found: {path}") from None
    nodes: list[Node] = []
    revoked: list[int] = []
    seen: set[int] = set()
    inline_keys = False
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"gateway.registry:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise ConfigError(where, "not a JSON object") from None
        if not isinstance(rec, dict):
            raise ConfigError(where, "not a JSON object")
        node_id = rec.get("node_id")
        if type(node_id) is not int or not 0 <= node_id <= 0xFFFFFFFF:
            raise ConfigError(f"{where}.node_id", "must be an integer 0..2^32-1")
        if node_id in seen:
            raise ConfigError(f"{where}.node_id", f"{node_id} is listed twice")
        seen.add(node_id)
        is_revoked = rec.get("revoked", False)
        if type(is_revoked) is not bool:
            raise ConfigError(f"{where}.revoked", "must be true or false")
        kind = rec.get("kind", "other")
        if kind not in REGISTRY_KINDS:
            raise ConfigError(f"{where}.kind", f"must be one of {', '.join(REGISTRY_KINDS)}")
        if "key" in rec:
            inline_keys = True
            key = _parse_key(str(rec["key"]), f"{where}.key")
        elif "key_file" in rec:
            kp = Path(str(rec["key_file"]))
            kp = kp if kp.is_absolute() else path.parent / kp
            check_secret_file(kp, f"{where}.key_file")
            key = _parse_key(kp.read_text(encoding="ascii", errors="replace"), f"{where}.key_file")
        else:
            raise ConfigError(where, "needs key or key_file")
        interval = rec.get("report_interval_s")
        if interval is not None and (type(interval) not in (int, float) or interval <= 0):
            raise ConfigError(f"{where}.report_interval_s", "must be a positive number")
        if is_revoked:
            revoked.append(node_id)
        else:
            nodes.append(Node(node_id, kind, NodeKeys(key), float(interval) if interval else None))
    if inline_keys:
        check_secret_file(path, "gateway.registry")
    return Registry(nodes, revoked)


def write_private(path: Path, data: str) -> None:
    """Write atomically, created 0600 from the start (no window where others can read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_registry(path: Path, nodes: Iterable[NodeSpec], key_dir: Path | None = None) -> None:
    """Write a registry file (0600). With key_dir, keys go to <key_dir>/<id>.key files (0600)."""
    lines = ["# urbansense node registry: one JSON object per line; keep this file 0600"]
    for n in nodes:
        rec: dict[str, object] = {"node_id": n.node_id, "kind": n.kind}
        if key_dir is None:
            rec["key"] = n.key.hex()
        else:
            kp = key_dir / f"{n.node_id:08x}.key"
            write_private(kp, n.key.hex() + "\n")
            rec["key_file"] = str(kp)
        if n.report_interval_s is not None:
            rec["report_interval_s"] = n.report_interval_s
        lines.append(json.dumps(rec))
    write_private(path, "\n".join(lines) + "\n")
