"""Registry reload without a restart: on SIGHUP and when the file changes on disk.

Technicians add and revoke nodes with ``urbansense registry`` while the gateway runs. The
chores loop calls ``poll()`` every second: one ``os.stat`` compares (inode, size, mtime) with
the last load; ``urbansense registry`` replaces the file atomically, so a change is a new
inode and a half-written file is never read. SIGHUP calls ``reload()`` directly (an editor
that rewrites in place within the same mtime tick is covered by it).

What a reload keeps and changes:
- The replay state (per-node high-water marks, windows, downlink counters) lives in the
  ReplayTable and the outbox, keyed by node id, and is not touched: a node removed and added
  back resumes its counters; nothing accepted before can be accepted again.
- The Registry object is shared by every stage and updated in place (Registry.replace), so
  verify, batch, health and the publisher see the new nodes at once.
- A file that does not load (bad JSON, a key file readable by others) changes nothing: the
  old registry keeps serving, the failure is counted (``registry_reloads_total{result=
  "failed"}``), logged with the key at fault, and shown on the status page.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from gateway.errors import ConfigError
from gateway.metrics import Metrics
from gateway.registry import Registry, load_registry

_log = logging.getLogger(__name__)

Stamp = tuple[int, int, int]


def _stamp(path: Path) -> Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class RegistryWatch:
    __slots__ = ("_on_change", "_stamp", "last_error", "loaded_s", "metrics", "path", "registry")

    def __init__(self, path: Path, registry: Registry, metrics: Metrics,
                 on_change: Callable[[Registry, list[int], list[int]], None] | None = None) -> None:
        self.path = path
        self.registry = registry
        self.metrics = metrics
        self._on_change = on_change  # (registry, added ids, removed or revoked ids)
        self._stamp = _stamp(path)
        self.loaded_s = time.time()
        self.last_error = ""

    def poll(self) -> bool:
        """Reload if the file changed since the last attempt -> True when reloaded."""
        stamp = _stamp(self.path)
        if stamp is None or stamp == self._stamp:
            return False
        return self.reload("file_changed")

    def reload(self, why: str = "sighup") -> bool:
        """Load the file and swap it in -> True on success; on failure the old one stays."""
        self._stamp = _stamp(self.path)  # a bad file is reported once, not every second
        try:
            new = load_registry(self.path)
        except (ConfigError, OSError, UnicodeDecodeError) as exc:
            self.metrics.registry_reloads.inc("failed")
            self.last_error = str(exc)
            key = exc.key if isinstance(exc, ConfigError) else "gateway.registry"
            _log.error("event=registry_reload_failed why=%s key=%s problem=%r kept_nodes=%d",
                       why, key, getattr(exc, "problem", str(exc)), len(self.registry))
            return False
        added, removed, revoked = self.registry.replace(new)
        self.metrics.registry_reloads.inc("ok")
        self.loaded_s = time.time()
        self.last_error = ""
        if self._on_change is not None and (added or removed or revoked):
            self._on_change(self.registry, added, removed + revoked)
        _log.info("event=registry_reloaded why=%s nodes=%d added=%d removed=%d revoked=%d",
                  why, len(self.registry), len(added), len(removed), len(revoked))
        return True

    def status(self) -> dict[str, object]:
        return {"path": str(self.path), "nodes": len(self.registry),
                "revoked": len(self.registry.revoked()), "loaded_s": self.loaded_s,
                "last_error": self.last_error}
