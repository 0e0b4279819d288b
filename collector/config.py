"""``collector.toml``: where the packs come from, where the readings go. Every key optional.

    [collector]
    id = "c1"                       # names this process in logs, metrics, MQTT client id
    [source]
    kind = "mqtt"                   # "mqtt" (one site, the default) | "jetstream" (the city)
    host = "127.0.0.1"              # mqtt: the site broker
    port = 1883
    servers = ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222", "nats://10.0.0.3:4222"]
    stream = "URBANSENSE"           # jetstream: created if missing, capturing the gateways'
    replicas = 3                    #   up/status/event subjects, num_replicas as given
    durable = "collectors"          # every collector naming it shares the work
    ack_wait_s = 30.0               # unacknowledged this long: redelivered (to any collector)
    max_age_s = 604800.0            # the stream keeps a message this long (acknowledged or not)
    [store]
    url = "sqlite:///var/lib/urbansense/collector.db"   # or "postgresql://user@host/db"
    [batch]
    max_messages = 1024             # messages per fetch and per transaction
    fetch_timeout_s = 0.5
    [http]
    listen = "127.0.0.1"            # /metrics (Prometheus) and /api/status
    port = 9106                     # 0: any free port

Relative sqlite paths are relative to the file.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUBJECT_PREFIX = "urbansense.v1"
DEAD_LETTER_PREFIX = "urbansense.deadletter"


class CollectorConfigError(ValueError):
    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


@dataclass(slots=True)
class SourceConfig:
    kind: str = "mqtt"
    host: str = "127.0.0.1"
    port: int = 1883
    servers: list[str] = field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    stream: str = "URBANSENSE"
    replicas: int = 3
    durable: str = "collectors"
    ack_wait_s: float = 30.0
    max_age_s: float = 7 * 86400.0


@dataclass(slots=True)
class CollectorConfig:
    collector_id: str = "collector"
    source: SourceConfig = field(default_factory=SourceConfig)
    store_url: str = "sqlite:///collector.db"
    max_messages: int = 1024
    fetch_timeout_s: float = 0.5
    http_listen: str = "127.0.0.1"
    http_port: int = 9106

    def validate(self) -> None:
        s = self.source
        if s.kind not in ("mqtt", "jetstream"):
            raise CollectorConfigError("source.kind", 'must be "mqtt" or "jetstream"')
        if not 0 < s.port < 65536:
            raise CollectorConfigError("source.port", "must be 1..65535")
        if s.kind == "jetstream" and not s.servers:
            raise CollectorConfigError("source.servers", "must list at least one nats:// URL")
        if not 1 <= s.replicas <= 5:
            raise CollectorConfigError("source.replicas", "must be 1..5")
        if s.max_age_s <= 0:
            raise CollectorConfigError("source.max_age_s", "must be > 0")
        if s.ack_wait_s <= 0:
            raise CollectorConfigError("source.ack_wait_s", "must be > 0")
        if self.max_messages < 1:
            raise CollectorConfigError("batch.max_messages", "must be >= 1")
        if self.fetch_timeout_s <= 0:
            raise CollectorConfigError("batch.fetch_timeout_s", "must be > 0")
        if not 0 <= self.http_port < 65536:
            raise CollectorConfigError("http.port", "must be 0..65535")
        if not self.store_url.startswith(("sqlite:///", "postgresql://", "postgres://")) \
                and "dbname=" not in self.store_url:
            raise CollectorConfigError("store.url", "must be sqlite:///PATH or postgresql://...")


def _get(table: dict[str, Any], name: str, key: str, kind: type, default: Any) -> Any:
    value = table.get(key, default)
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise CollectorConfigError(f"{name}.{key}", f"must be a {kind.__name__}")
    return value


def config_from_dict(raw: dict[str, Any], base_dir: Path | None = None) -> CollectorConfig:
    known = {"collector", "source", "store", "batch", "http"}
    for name in raw:
        if name not in known:
            raise CollectorConfigError(name, "unknown section")
    t = {name: raw.get(name, {}) for name in known}
    for name, table in t.items():
        if not isinstance(table, dict):
            raise CollectorConfigError(name, "must be a table")
    d = SourceConfig()
    src = t["source"]
    servers = src.get("servers", d.servers)
    if not isinstance(servers, list) or not all(isinstance(x, str) for x in servers):
        raise CollectorConfigError("source.servers", "must be a list of nats:// URLs")
    source = SourceConfig(
        kind=_get(src, "source", "kind", str, d.kind),
        host=_get(src, "source", "host", str, d.host),
        port=_get(src, "source", "port", int, d.port),
        servers=servers,
        stream=_get(src, "source", "stream", str, d.stream),
        replicas=_get(src, "source", "replicas", int, d.replicas),
        durable=_get(src, "source", "durable", str, d.durable),
        ack_wait_s=_get(src, "source", "ack_wait_s", float, d.ack_wait_s),
        max_age_s=_get(src, "source", "max_age_s", float, d.max_age_s),
    )
    c = CollectorConfig()
    url = _get(t["store"], "store", "url", str, c.store_url)
    if url.startswith("sqlite:///") and base_dir is not None:
        path = Path(url.removeprefix("sqlite:///"))
        url = "sqlite:///" + str(path if path.is_absolute() else base_dir / path)
    cfg = CollectorConfig(
        collector_id=_get(t["collector"], "collector", "id", str, c.collector_id),
        source=source,
        store_url=url,
        max_messages=_get(t["batch"], "batch", "max_messages", int, c.max_messages),
        fetch_timeout_s=_get(t["batch"], "batch", "fetch_timeout_s", float, c.fetch_timeout_s),
        http_listen=_get(t["http"], "http", "listen", str, c.http_listen),
        http_port=_get(t["http"], "http", "port", int, c.http_port),
    )
    cfg.validate()
    return cfg


def load_config(path: str | os.PathLike[str]) -> CollectorConfig:
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text())
    except OSError as exc:
        raise CollectorConfigError(str(p), f"cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CollectorConfigError(str(p), f"not TOML: {exc}") from None
    return config_from_dict(raw, p.parent)
