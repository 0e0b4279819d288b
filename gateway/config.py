"""Gateway configuration: the validated dataclasses the stages are given.

``gateway.config_toml`` reads them from TOML (``load_config``); code that builds one calls
``validate``. Every problem raises ``ConfigError(key, problem)`` with the dotted key, so an
operator reading the journal knows which line to fix. Secrets never live here: only paths to files
that only their owner may read or write, mode 0600 or 0400 (``check_secret_file``).
"""

from __future__ import annotations

import re
import ssl
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from gateway.errors import ConfigError

_NAME_RE: Final = re.compile(r"^[a-z0-9-]{1,64}$")


@dataclass(slots=True)
class BrokerAddress:
    host: str
    port: int


@dataclass(slots=True)
class BatchConfig:
    max_records: int = 100
    max_bytes: int = 16384
    max_age_s: float = 5.0
    # A batch holding frames that wait for a serial ack closes after this long: a node's
    # retransmit timer is shorter than max_age_s. Quiet serial sites pay one commit per frame.
    ack_max_delay_ms: int = 200
    # A frame no node will retransmit (BLE: no ack) is on disk this soon after it was
    # accepted, in a small staging write, while its batch stays open up to max_age_s: the
    # loss window of a power cut is this, not the batch's age (docs/GATEWAY.md).
    durable_ms: int = 1000


@dataclass(slots=True)
class OutboxConfig:
    path: Path | None = None  # default: <data_dir>/outbox.db
    max_bytes: int = 256 * 1024 * 1024
    synchronous: str = "full"  # "full": durable across power cuts; "normal": across crashes
    # Deletes of published batches wait this long (or for 256 of them) to share one write:
    # a lost delete costs a duplicate publish, a commit per second costs the SD card.
    ack_flush_s: float = 30.0


@dataclass(slots=True)
class MqttConfig:
    brokers: list[BrokerAddress] = field(default_factory=list)
    protocol: str = "auto"  # "auto" (5, falling back to 3.1.1), "5", "3.1.1"
    client_id: str = ""
    username: str = ""
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    tls: bool = False
    # A broker that stops answering is detected within 2 x keepalive_s + 2 s (paho's PINGREQ
    # after keepalive_s of silence, the connection dropped keepalive_s later).
    keepalive_s: int = 15
    inflight_max: int = 16
    drain_rate_batches_s: float = 50.0
    backoff_min_s: float = 0.5
    backoff_max_s: float = 60.0
    publish_timeout_s: float = 30.0
    connect_timeout_s: float = 10.0
    # How long a broker keeps the downlink listener's session (and the commands queued in it)
    # while the gateway is away: MQTT 5 Session Expiry Interval; 3.1.1 brokers keep it for ever.
    session_expiry_s: int = 7 * 86400
    # A preferred broker must have been reachable this long before the gateway returns to it.
    failback_s: float = 30.0


@dataclass(slots=True)
class PublishConfig:
    # "mqtt": uplinks over the MQTT session (mqtt.*); "jetstream": uplinks as JetStream
    # publishes to a NATS cluster, each batch deleted at the stream's own ack (docs/CITY.md).
    backend: str = "mqtt"
    servers: list[str] = field(default_factory=list)  # jetstream: ["nats://host:4222", ...]


@dataclass(slots=True)
class SerialConfig:
    ports: list[str] = field(default_factory=list)
    baudrate: int = 115200
    retry_min_s: float = 0.2
    retry_max_s: float = 30.0


@dataclass(slots=True)
class BleConfig:
    enabled: bool = False
    backend: str = "bleak"  # "bleak" (the platform's) or "datagram" (docs/GATEWAY.md)
    datagram_socket: str = ""  # the datagram input's UNIX socket path
    adapter: str = ""
    company_id: int = 0xFFFF
    watchdog_s: float = 120.0
    power_cycle_command: list[str] = field(default_factory=list)
    power_cycle_timeout_s: float = 30.0  # the command's process group is killed after this
    backoff_max_s: float = 3600.0  # cap of the wait between failed recovery rounds
    # None: /etc/bluetooth/main.conf with backend "bleak", unchecked with "datagram"
    bluez_main_conf: Path | None = None


@dataclass(slots=True)
class HttpConfig:
    enabled: bool = True
    listen: str = "127.0.0.1"
    port: int = 9105  # 0: any free port (tests)


@dataclass(slots=True)
class HealthConfig:
    default_interval_s: float = 3600.0
    silent_factor: float = 2.5
    low_battery_mv: int = 3300
    check_interval_s: float = 30.0


@dataclass(slots=True)
class GatewayConfig:
    site: str
    gateway_id: str
    registry: Path
    data_dir: Path
    batch: BatchConfig = field(default_factory=BatchConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    serial: SerialConfig = field(default_factory=SerialConfig)
    ble: BleConfig = field(default_factory=BleConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    queue_size: int = 10000
    publish: PublishConfig = field(default_factory=PublishConfig)

    @property
    def outbox_path(self) -> Path:
        return self.outbox.path or self.data_dir / "outbox.db"

    @property
    def topic_prefix(self) -> str:
        return f"urbansense/v1/{self.site}/{self.gateway_id}"

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"urbansense-{self.site}-{self.gateway_id}"

    def validate(self) -> None:
        """Checks that need the whole config; load_config calls it, code that builds one should."""
        if not _NAME_RE.match(self.site):
            raise ConfigError("gateway.site", "must match [a-z0-9-]{1,64}")
        if not _NAME_RE.match(self.gateway_id):
            raise ConfigError("gateway.id", "must match [a-z0-9-]{1,64}")
        _positive("batch.max_records", self.batch.max_records)
        _positive("batch.max_bytes", self.batch.max_bytes)
        _positive("batch.max_age_s", self.batch.max_age_s)
        if self.batch.ack_max_delay_ms < 0:
            raise ConfigError("batch.ack_max_delay_ms", "must be >= 0")
        if self.batch.durable_ms < 0:
            raise ConfigError("batch.durable_ms", "must be >= 0")
        if self.outbox.max_bytes < 4 * self.batch.max_bytes:
            raise ConfigError("outbox.max_bytes", "must hold at least 4 batches (4 x batch.max_bytes)")
        if self.outbox.synchronous not in ("full", "normal"):
            raise ConfigError("outbox.synchronous", 'must be "full" or "normal"')
        if self.publish.backend not in ("mqtt", "jetstream"):
            raise ConfigError("publish.backend", 'must be "mqtt" or "jetstream"')
        if self.publish.backend == "jetstream" and not self.publish.servers:
            raise ConfigError("publish.servers", 'required with backend "jetstream" (["nats://host:4222", ...])')
        if self.mqtt.protocol not in ("auto", "5", "3.1.1"):
            raise ConfigError("mqtt.protocol", 'must be "auto", "5" or "3.1.1"')
        _positive("outbox.ack_flush_s", self.outbox.ack_flush_s)
        _positive("mqtt.inflight_max", self.mqtt.inflight_max)
        _positive("mqtt.drain_rate_batches_s", self.mqtt.drain_rate_batches_s)
        if self.mqtt.backoff_min_s <= 0 or self.mqtt.backoff_max_s < self.mqtt.backoff_min_s:
            raise ConfigError("mqtt.backoff_max_s", "need 0 < backoff_min_s <= backoff_max_s")
        if not 0 < self.mqtt.keepalive_s <= 65535:
            raise ConfigError("mqtt.keepalive_s", "must be 1..65535 (0 would turn keepalive off)")
        _positive("mqtt.publish_timeout_s", self.mqtt.publish_timeout_s)
        _positive("mqtt.connect_timeout_s", self.mqtt.connect_timeout_s)
        if not 0 < self.mqtt.session_expiry_s <= 0xFFFFFFFF:
            raise ConfigError("mqtt.session_expiry_s", "must be 1..4294967295 (0 would drop queued downlinks)")
        if self.mqtt.failback_s < 0:
            raise ConfigError("mqtt.failback_s", "must be >= 0")
        if self.mqtt.cert_file is not None and not self.mqtt.tls:
            raise ConfigError("mqtt.cert_file", "needs mqtt.tls = true (or mqtt.ca_file)")
        if self.mqtt.cert_file is not None and self.mqtt.key_file is None:
            raise ConfigError("mqtt.key_file", "required with mqtt.cert_file")
        if self.mqtt.key_file is not None and self.mqtt.cert_file is None:
            raise ConfigError("mqtt.key_file", "needs mqtt.cert_file")
        _positive("serial.baudrate", self.serial.baudrate)
        if self.serial.retry_min_s <= 0:
            raise ConfigError("serial.retry_min_s", "must be > 0 (0 would busy-loop on a missing port)")
        if self.serial.retry_max_s < self.serial.retry_min_s:
            raise ConfigError("serial.retry_max_s", "must be >= serial.retry_min_s")
        if self.ble.backend not in ("bleak", "datagram"):
            raise ConfigError("ble.backend", 'must be "bleak" or "datagram"')
        if self.ble.enabled and self.ble.backend == "datagram" and not self.ble.datagram_socket:
            raise ConfigError("ble.datagram_socket", 'required with backend = "datagram"')
        if not 0 <= self.ble.company_id <= 0xFFFF:
            raise ConfigError("ble.company_id", "must be 0..0xFFFF")
        _positive("ble.watchdog_s", self.ble.watchdog_s)
        _positive("ble.power_cycle_timeout_s", self.ble.power_cycle_timeout_s)
        if self.ble.backoff_max_s < self.ble.watchdog_s:
            raise ConfigError("ble.backoff_max_s", "must be >= ble.watchdog_s")
        if not 0 <= self.http.port <= 65535:
            raise ConfigError("http.port", "must be 0..65535")
        _positive("health.default_interval_s", self.health.default_interval_s)
        if self.health.silent_factor < 1:
            raise ConfigError("health.silent_factor", "must be >= 1 (below, every node is silent)")
        _positive("health.low_battery_mv", self.health.low_battery_mv)
        _positive("health.check_interval_s", self.health.check_interval_s)
        _positive("queue_size", self.queue_size)
        for key, path in self.secret_files():
            if path.exists():  # a missing one is reported by check_files, at start
                check_secret_file(path, key)

    def secret_files(self) -> list[tuple[str, Path]]:
        """(key, path) of the configured files that hold secrets (the registry is checked on load)."""
        files = [("mqtt.password_file", self.mqtt.password_file), ("mqtt.key_file", self.mqtt.key_file)]
        return [(k, p) for k, p in files if p is not None]

    def check_files(self) -> None:
        """Every file the config names, checked as the gateway will use it (at start and on
        SIGHUP): present, a regular readable file, secrets 0600, the CA a PEM bundle, the
        client certificate and key a matching pair. ConfigError names the key and the path,
        so a typo is caught before the gateway retries a broker for ever."""
        m = self.mqtt
        for key, path in self.secret_files():
            check_secret_file(path, key)
        for key, named in (("mqtt.ca_file", m.ca_file), ("mqtt.cert_file", m.cert_file)):
            if named is not None:
                _check_readable(named, key)
        if m.ca_file is not None:
            try:
                ssl.create_default_context(cafile=str(m.ca_file))
            except (ssl.SSLError, ValueError) as exc:
                raise ConfigError("mqtt.ca_file", f"{m.ca_file}: not a PEM CA certificate ({exc})") from None
        if m.cert_file is not None and m.key_file is not None:
            try:
                ssl.create_default_context().load_cert_chain(str(m.cert_file), str(m.key_file))
            except (ssl.SSLError, ValueError) as exc:
                raise ConfigError(
                    "mqtt.cert_file",
                    f"{m.cert_file} with {m.key_file}: not a PEM certificate and its key ({exc})",
                ) from None


def _positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(key, "must be > 0")


def check_secret_file(path: Path, key: str) -> None:
    """Refuse a secret file with any group or world bit: a key readable by a group is a leaked key."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(key, f"file not found: {path}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(key, f"{path} is not a regular file")
    if st.st_mode & 0o077:
        mode = stat.S_IMODE(st.st_mode)
        raise ConfigError(key, f"{path} has mode {mode:04o}, open to group or others; chmod 600 it")


def _check_readable(path: Path, key: str) -> None:
    try:
        with path.open("rb"):
            pass
    except FileNotFoundError:
        raise ConfigError(key, f"file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(key, f"{path} is not a regular file") from None
    except OSError as exc:
        raise ConfigError(key, f"{path}: {exc.strerror}") from None
    if not path.is_file():
        raise ConfigError(key, f"{path} is not a regular file")


def read_secret(path: Path, key: str) -> str:
    check_secret_file(path, key)
    return path.read_text(encoding="utf-8").strip()
