"""Gateway configuration, TOML in: ``load_config`` reads a file into ``gateway.config``.

Every key is read through a typed ``_Section`` that names it dotted (``mqtt.keepalive_s``) in
each ``ConfigError``, and a key no section reads is an error: a typo in the file must not
pass as a default. Relative paths are taken from the file's directory. The result is
validated (``GatewayConfig.validate``) before it is returned.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.config import (
    BatchConfig,
    BleConfig,
    BrokerAddress,
    GatewayConfig,
    HealthConfig,
    HttpConfig,
    MqttConfig,
    OutboxConfig,
    PublishConfig,
    SerialConfig,
)
from gateway.errors import ConfigError


def load_config(path: str | os.PathLike[str]) -> GatewayConfig:
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("config", f"file not found: {p}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"not valid TOML: {exc}") from None
    return config_from_dict(raw, base_dir=p.parent)


class _Section:
    """Typed reads from one TOML table; unknown keys are errors (typos must not pass)."""

    def __init__(self, raw: Mapping[str, Any], name: str, base_dir: Path) -> None:
        self._raw = raw
        self._name = name
        self._base = base_dir
        self._used: set[str] = set()

    def _key(self, k: str) -> str:
        return f"{self._name}.{k}" if self._name else k

    def _get(self, k: str) -> Any:
        self._used.add(k)
        return self._raw.get(k)

    def str_(self, k: str, default: str) -> str:
        v = self._get(k)
        if v is None:
            return default
        if not isinstance(v, str):
            raise ConfigError(self._key(k), "must be a string")
        return v

    def int_(self, k: str, default: int) -> int:
        v = self._get(k)
        if v is None:
            return default
        if type(v) is not int:
            raise ConfigError(self._key(k), "must be an integer")
        return v

    def float_(self, k: str, default: float) -> float:
        v = self._get(k)
        if v is None:
            return default
        if type(v) not in (int, float):
            raise ConfigError(self._key(k), "must be a number")
        return float(v)

    def bool_(self, k: str, default: bool) -> bool:
        v = self._get(k)
        if v is None:
            return default
        if type(v) is not bool:
            raise ConfigError(self._key(k), "must be true or false")
        return v

    def path(self, k: str, default: Path | None) -> Path | None:
        v = self._get(k)
        if v is None or v == "":
            return default
        if not isinstance(v, str):
            raise ConfigError(self._key(k), "must be a path string")
        p = Path(v).expanduser()
        return p if p.is_absolute() else self._base / p

    def str_list(self, k: str) -> list[str]:
        v = self._get(k)
        if v is None:
            return []
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ConfigError(self._key(k), "must be a list of strings")
        return list(v)

    def raw(self, k: str) -> Any:
        return self._get(k)

    def finish(self) -> None:
        for k in self._raw:
            if k not in self._used:
                raise ConfigError(self._key(k), "unknown key")


def _table(raw: Mapping[str, Any], name: str, base: Path) -> _Section:
    v = raw.get(name, {})
    if not isinstance(v, dict):
        raise ConfigError(name, "must be a table")
    return _Section(v, name, base)


def _brokers(value: Any) -> list[BrokerAddress]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError("mqtt.brokers", 'must be a list like ["host:1883"]')
    out: list[BrokerAddress] = []
    for i, item in enumerate(value):
        key = f"mqtt.brokers[{i}]"
        if isinstance(item, str):
            host, sep, port_s = item.rpartition(":")
            if not sep or not host or not port_s.isdigit():
                raise ConfigError(key, 'must be "host:port"')
            port = int(port_s)
        elif isinstance(item, dict) and isinstance(item.get("host"), str):
            host, port = item["host"], item.get("port", 1883)
            if type(port) is not int:
                raise ConfigError(f"{key}.port", "must be an integer")
        else:
            raise ConfigError(key, 'must be "host:port" or {host = ..., port = ...}')
        if not 0 < port < 65536:
            raise ConfigError(key, "port must be 1..65535")
        out.append(BrokerAddress(host.strip("[]"), port))
    return out


def config_from_dict(raw: Mapping[str, Any], base_dir: Path | None = None) -> GatewayConfig:
    """Build and validate a config from parsed TOML; relative paths are taken from base_dir."""
    base = base_dir or Path.cwd()
    top = _Section(raw, "", base)
    for name in ("gateway", "batch", "outbox", "publish", "mqtt", "serial", "ble", "http", "health"):
        top.raw(name)
    queue_size = top.int_("queue_size", 10000)
    top.finish()

    g = _table(raw, "gateway", base)
    site = g.str_("site", "")
    gw_id = g.str_("id", "")
    registry = g.path("registry", None)
    data_dir = g.path("data_dir", None)
    g.finish()
    if not site:
        raise ConfigError("gateway.site", "required")
    if not gw_id:
        raise ConfigError("gateway.id", "required")
    if registry is None:
        raise ConfigError("gateway.registry", "required (path of the node registry file)")
    if data_dir is None:
        raise ConfigError("gateway.data_dir", "required (directory for the outbox)")

    b = _table(raw, "batch", base)
    batch = BatchConfig(
        b.int_("max_records", 100),
        b.int_("max_bytes", 16384),
        b.float_("max_age_s", 5.0),
        b.int_("ack_max_delay_ms", 200),
        b.int_("durable_ms", 1000),
    )
    b.finish()

    o = _table(raw, "outbox", base)
    outbox = OutboxConfig(
        o.path("path", None),
        o.int_("max_bytes", 256 * 1024 * 1024),
        o.str_("synchronous", "full"),
        o.float_("ack_flush_s", 30.0),
    )
    o.finish()

    pu = _table(raw, "publish", base)
    publish = PublishConfig(pu.str_("backend", "mqtt"), pu.str_list("servers"))
    pu.finish()

    m = _table(raw, "mqtt", base)
    mqtt = MqttConfig(
        brokers=_brokers(m.raw("brokers")),
        protocol=m.str_("protocol", "auto"),
        client_id=m.str_("client_id", ""),
        username=m.str_("username", ""),
        password_file=m.path("password_file", None),
        ca_file=m.path("ca_file", None),
        cert_file=m.path("cert_file", None),
        key_file=m.path("key_file", None),
        tls=m.bool_("tls", False),
        keepalive_s=m.int_("keepalive_s", 15),
        inflight_max=m.int_("inflight_max", 16),
        drain_rate_batches_s=m.float_("drain_rate_batches_s", 50.0),
        backoff_min_s=m.float_("backoff_min_s", 0.5),
        backoff_max_s=m.float_("backoff_max_s", 60.0),
        publish_timeout_s=m.float_("publish_timeout_s", 30.0),
        connect_timeout_s=m.float_("connect_timeout_s", 10.0),
        session_expiry_s=m.int_("session_expiry_s", 7 * 86400),
        failback_s=m.float_("failback_s", 30.0),
    )
    m.finish()
    if mqtt.ca_file is not None:
        mqtt.tls = True
    if not mqtt.brokers:
        raise ConfigError("mqtt.brokers", "at least one broker required")

    s = _table(raw, "serial", base)
    serial = SerialConfig(
        s.str_list("ports"),
        s.int_("baudrate", 115200),
        s.float_("retry_min_s", 0.2),
        s.float_("retry_max_s", 30.0),
    )
    s.finish()

    bl = _table(raw, "ble", base)
    ble = BleConfig(
        enabled=bl.bool_("enabled", False),
        backend=bl.str_("backend", "bleak"),
        datagram_socket=bl.str_("datagram_socket", ""),
        adapter=bl.str_("adapter", ""),
        company_id=bl.int_("company_id", 0xFFFF),
        watchdog_s=bl.float_("watchdog_s", 120.0),
        power_cycle_command=bl.str_list("power_cycle_command"),
        power_cycle_timeout_s=bl.float_("power_cycle_timeout_s", 30.0),
        backoff_max_s=bl.float_("backoff_max_s", 3600.0),
        bluez_main_conf=bl.path("bluez_main_conf", None),
    )
    bl.finish()

    h = _table(raw, "http", base)
    http = HttpConfig(h.bool_("enabled", True), h.str_("listen", "127.0.0.1"), h.int_("port", 9105))
    h.finish()

    he = _table(raw, "health", base)
    health = HealthConfig(
        he.float_("default_interval_s", 3600.0),
        he.float_("silent_factor", 2.5),
        he.int_("low_battery_mv", 3300),
        he.float_("check_interval_s", 30.0),
    )
    he.finish()

    cfg = GatewayConfig(
        site, gw_id, registry, data_dir, batch, outbox, mqtt, serial, ble, http, health, queue_size, publish
    )
    cfg.validate()
    return cfg
