"""The site's node registry file, as technicians change it: add, list, revoke.

The file is the gateway's registry (gateway/registry.py: JSON lines, mode 0600); the gateway
picks changes up without a restart (gateway/registry_watch.py). Every change here:
- holds an exclusive lock on ``<registry>.lock`` (flock) for read-modify-write, so two
  commands (two laptops on a shared directory, or provision and revoke at once) never
  interleave: the second waits up to ``lock_timeout_s`` and then says who to wait for;
- writes a new file and renames it over the old one (write_private: created 0600, fsynced),
  so the gateway and a pulled plug see the old file or the new one, never half of one;
- checks the result with the gateway's own loader before it replaces anything.

Node ids are allocated under the lock: one above the highest id ever listed, revoked ones
included, so an id is never given to a second board. Keys are never printed or logged.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from gateway.errors import ConfigError
from gateway.registry import REGISTRY_KINDS, load_registry, write_private
from urbansense.fieldkit._errors import FieldError

LOCK_TIMEOUT_S: Final = 10.0
MAX_NODE_ID: Final = 0xFFFFFFFF
HEADER: Final = "# urbansense site registry: one JSON object per line; keep this file 0600"
_PUBLIC: Final[tuple[str, ...]] = ("node_id", "kind", "board", "site", "transport", "added", "revoked", "revoked_on")


def parse_node_id(text: str) -> int:
    """"42", "0x2a" or "0000002a" (the 8 hex digits the gateway prints) -> 42."""
    t = text.strip().lower()
    try:
        n = int(t, 16) if t.startswith("0x") or len(t) == 8 else int(t)
    except ValueError:
        raise FieldError(f"node id {text!r} is not a number",
                         "give it in decimal (42) or as 8 hex digits like the gateway prints (0000002a)",
                         exit_code=2) from None
    if not 0 <= n <= MAX_NODE_ID:
        raise FieldError(f"node id {text} is out of range", "node ids are 0..4294967295", exit_code=2)
    return n


def public(rec: dict[str, Any]) -> dict[str, Any]:
    """A record without its key (what list and --json show)."""
    out: dict[str, Any] = {k: rec[k] for k in _PUBLIC if k in rec}
    out["node"] = f"{rec['node_id']:08x}"
    out.setdefault("revoked", False)
    return out


class SiteRegistry:
    def __init__(self, path: Path, lock_timeout_s: float = LOCK_TIMEOUT_S) -> None:
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s

    # -- reading ------------------------------------------------------------------------

    def records(self) -> list[dict[str, Any]]:
        """Every record in file order (keys included: callers must not print them)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        out: list[dict[str, Any]] = []
        for lineno, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                rec = None
            if not isinstance(rec, dict) or type(rec.get("node_id")) is not int:
                raise FieldError(f"{self.path}:{lineno} is not a registry record",
                                 "fix or remove that line by hand (the gateway refuses the file too)")
            out.append(rec)
        return out

    def nodes(self) -> list[dict[str, Any]]:
        return [public(r) for r in self.records()]

    # -- changing -----------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[list[dict[str, Any]]]:
        """Hold the lock; yield the records to change in place; write them back on exit."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + self.lock_timeout_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise FieldError(
                            f"the registry {self.path} is being changed by another command "
                            f"(lock {lock_path} held for {self.lock_timeout_s:.0f} s)",
                            "wait for the other provision/registry command to finish and run this "
                            "one again; if none is running, a crashed one holds nothing: retry") from None
                    time.sleep(0.05)  # flock has no timeout of its own
            recs = self.records()
            before = json.dumps(recs, sort_keys=True)
            yield recs
            if json.dumps(recs, sort_keys=True) != before:
                self._write(recs)
        finally:
            os.close(fd)  # releases the lock

    def _write(self, recs: list[dict[str, Any]]) -> None:
        text = HEADER + "\n" + "".join(json.dumps(r) + "\n" for r in recs)
        tmp = self.path.with_name(f".{self.path.name}.check{os.getpid()}")
        write_private(tmp, text)
        try:
            load_registry(tmp)  # the gateway must accept what we leave behind
        except ConfigError as exc:
            tmp.unlink(missing_ok=True)
            raise FieldError(f"the registry would not load: {exc.key}: {exc.problem}",
                             "nothing was changed; fix the registry file by hand") from None
        os.replace(tmp, self.path)

    def add(self, kind: str, *, node_id: int | None = None, key: bytes | None = None,
            extra: dict[str, Any] | None = None) -> tuple[dict[str, Any], bytes]:
        """Register a node -> (its public record, its key). A new key when none is given."""
        if kind not in REGISTRY_KINDS:
            raise FieldError(f"unknown kind {kind!r}", f"use one of: {', '.join(REGISTRY_KINDS)}", exit_code=2)
        key = key if key is not None else secrets.token_bytes(16)
        with self.locked() as recs:
            ids = {r["node_id"] for r in recs}
            if node_id is None:
                node_id = max(ids, default=0) + 1
                if node_id > MAX_NODE_ID:
                    raise FieldError("no node id left above the highest one",
                                     "give a free id with --node-id")
            elif node_id in ids:
                old = next(r for r in recs if r["node_id"] == node_id)
                state = "revoked" if old.get("revoked") else "in use"
                raise FieldError(f"node id {node_id} ({node_id:08x}) is already {state} "
                                 f"({old.get('kind')}, added {old.get('added', '?')})",
                                 "leave out --node-id to get the next free id", exit_code=2)
            rec: dict[str, Any] = {"node_id": node_id, "kind": kind, "key": key.hex()}
            rec.update(extra or {})
            rec.setdefault("added", dt.date.today().isoformat())
            recs.append(rec)
        return public(rec), key

    def revoke(self, node_id: int) -> tuple[dict[str, Any], bool]:
        """-> (the record, True if it was revoked now; False if it already was)."""
        with self.locked() as recs:
            rec = next((r for r in recs if r["node_id"] == node_id), None)
            if rec is None:
                raise FieldError(f"node {node_id} ({node_id:08x}) is not in {self.path}",
                                 "check the id with `urbansense registry list`", exit_code=2)
            if rec.get("revoked"):
                return public(rec), False
            rec["revoked"] = True
            rec["revoked_on"] = dt.date.today().isoformat()
        return public(rec), True
