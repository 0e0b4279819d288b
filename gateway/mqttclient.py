"""MQTT connections the gateway opens: one factory for the uplink session and the downlink
listeners, the protocol each broker speaks, and errors an operator can act on.

- Protocol: MQTT 5, or 3.1.1 when a broker refuses 5 or leaves a v5 CONNECT unanswered and
  then accepts 3.1.1; remembered per broker (``Protocols``), shared by every connection.
- A persistent connection (the downlink listeners) asks the broker to keep its session:
  ``clean_start = False`` and ``Session Expiry Interval = mqtt.session_expiry_s`` on MQTT 5
  (MQTT 5.0 section 3.1.2.11.2), ``clean_session = False`` on 3.1.1 (3.1.1 section 3.1.2.4),
  so QoS 1 messages published while the gateway is away wait for it.
- Errors say why: paho reports a TLS alert (``certificate required``) or a reset on its log
  and then lets the connect time out; ``TransportLog`` keeps that line and ``describe`` puts
  it in the error instead of ``Operation timed out``. A lost keepalive says so with the bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
import ssl
from typing import Any, Final

import aiomqtt
from aiomqtt.exceptions import MqttCodeError, MqttConnectError
from paho.mqtt.client import MQTT_LOG_ERR
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.config import BrokerAddress, GatewayConfig, MqttConfig, read_secret

_log = logging.getLogger(__name__)
_UNSUPPORTED_PROTOCOL: Final = (1, 132)  # CONNACK: 3.1.1 "unacceptable version", 5 "unsupported"


def keepalive_bound_s(keepalive_s: float) -> float:
    """Worst time from a broker's last byte to the session's end (docs/GATEWAY.md): paho sends
    PINGREQ after keepalive_s without a byte from the broker and drops the connection after
    keepalive_s more; its timer is checked once a second (aiomqtt's misc loop)."""
    return 2 * keepalive_s + 2


class TransportLog:
    """paho's log callback for one client: keeps the last error (a TLS alert, a reset), which
    paho logs (to ``gateway.mqtt``) but never raises.

    An error while the client waits for its CONNACK fails the connect at once with that error
    (paho has closed the socket; aiomqtt would wait out ``connect_timeout_s``)."""

    __slots__ = ("_connecting", "_loop", "last_error")

    def __init__(self) -> None:
        self.last_error = ""
        self._connecting: aiomqtt.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def watch_connect(self, client: aiomqtt.Client) -> None:
        self._connecting, self._loop = client, asyncio.get_running_loop()

    def connected(self) -> None:
        self._connecting = None

    def __call__(self, client: Any, userdata: Any, level: int, buf: str) -> None:
        if level == MQTT_LOG_ERR:
            self.last_error = buf
            if self._connecting is not None and self._loop is not None:
                # paho calls from the event loop or from the connect's executor thread.
                self._loop.call_soon_threadsafe(self._fail_connect, buf)

    def _fail_connect(self, error: str) -> None:
        client = self._connecting
        if client is not None and not client._connected.done():
            client._connected.set_exception(aiomqtt.MqttError(error))


def describe(exc: BaseException, transport: TransportLog | None, keepalive_s: float) -> str:
    """One line naming the cause: the transport's own error first (TLS alert, reset)."""
    if isinstance(exc, MqttCodeError) and "keep alive" in str(exc.rc).lower():
        return (f"keepalive_timeout: nothing from the broker for 2 x keepalive_s "
                f"(detected within {keepalive_bound_s(keepalive_s):.0f} s of its last byte)")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"tls: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"tls: {exc}"  # e.g. "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required"
    text = str(exc) or type(exc).__name__
    if transport is not None and transport.last_error:
        alert = transport.last_error
        if "alert" in alert.lower() or "ssl" in alert.lower():
            return f"tls: {alert} ({text})"
        return f"{alert} ({text})"
    return text


class Credentials:
    """The MQTT password and a fingerprint of every credential file, shared by every
    connection. The client certificate and key are read by each connect (a new client per
    session), so a change needs only new sessions; ``reload`` says whether one is needed."""

    __slots__ = ("_fingerprint", "_mqtt", "password")

    def __init__(self, mqtt: MqttConfig) -> None:
        self._mqtt = mqtt
        self.password, self._fingerprint = self._read()

    def _read(self) -> tuple[str | None, bytes]:
        m = self._mqtt
        password = read_secret(m.password_file, "mqtt.password_file") if m.password_file else None
        digest = hashlib.sha256((password or "").encode())
        for path in (m.cert_file, m.key_file):
            if path is not None:
                digest.update(path.read_bytes())
        return password, digest.digest()

    def reload(self) -> bool:
        """Read again; True when something changed. ConfigError (nothing replaced) on a bad file."""
        password, fingerprint = self._read()
        if fingerprint == self._fingerprint:
            return False
        self.password, self._fingerprint = password, fingerprint
        return True


class Protocols:
    """Which MQTT version to offer each broker (``mqtt.protocol = "auto"``)."""

    __slots__ = ("_mode", "_probe_v311", "_v311")

    def __init__(self, mode: str) -> None:
        self._mode = mode
        self._v311: set[tuple[str, int]] = set()  # brokers that speak 3.1.1 only
        self._probe_v311: set[tuple[str, int]] = set()  # next attempt tries 3.1.1

    def offer_v5(self, broker: BrokerAddress) -> tuple[bool, bool]:
        """(v5, probing): probing is a 3.1.1 attempt after an unanswered v5 CONNECT."""
        key = (broker.host, broker.port)
        auto = self._mode == "auto"
        probing = auto and key in self._probe_v311
        self._probe_v311.discard(key)
        return self._mode == "5" or (auto and key not in self._v311 and not probing), probing

    def connected(self, broker: BrokerAddress, probing: bool) -> None:
        if probing:
            _log.warning("event=mqtt5_refused broker=%s:%d fallback=3.1.1 reason=no_connack",
                         broker.host, broker.port)
            self._v311.add((broker.host, broker.port))

    def failed(self, broker: BrokerAddress, v5: bool, exc: BaseException) -> None:
        if not (v5 and self._mode == "auto"):
            return
        key = (broker.host, broker.port)
        if isinstance(exc, MqttConnectError):
            if exc.rc in _UNSUPPORTED_PROTOCOL:
                _log.warning("event=mqtt5_refused broker=%s:%d fallback=3.1.1", *key)
                self._v311.add(key)
        elif isinstance(exc, aiomqtt.MqttError) and "refused" not in str(exc).lower():
            # Some 3.1.1-only brokers drop or ignore an MQTT 5 CONNECT instead of refusing it:
            # after a v5 attempt that got no answer (not a refused TCP connect), probe 3.1.1.
            self._probe_v311.add(key)


def build_client(
    cfg: GatewayConfig,
    broker: BrokerAddress,
    v5: bool,
    *,
    identifier: str,
    password: str | None,
    will: aiomqtt.Will | None = None,
    persistent: bool = False,
    max_inflight: int = 20,
) -> tuple[aiomqtt.Client, TransportLog]:
    m = cfg.mqtt
    tls = None
    if m.tls:
        tls = aiomqtt.TLSParameters(
            ca_certs=str(m.ca_file) if m.ca_file else None,
            certfile=str(m.cert_file) if m.cert_file else None,
            keyfile=str(m.key_file) if m.key_file else None,
        )
    kw: dict[str, Any] = {}
    if persistent and v5:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = m.session_expiry_s
        kw = {"clean_start": False, "properties": props}
    elif persistent:
        kw = {"clean_session": False}
    client = aiomqtt.Client(
        broker.host,
        broker.port,
        username=m.username or None,
        password=password,
        identifier=identifier,
        protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
        will=will,
        keepalive=m.keepalive_s,
        timeout=m.connect_timeout_s,
        tls_params=tls,
        max_inflight_messages=max_inflight,
        logger=logging.getLogger("gateway.mqtt"),
        **kw,
    )
    transport = TransportLog()
    client._client.on_log = transport  # paho's callback: its errors never reach us otherwise
    return client, transport


def force_close(client: aiomqtt.Client) -> None:
    """aiomqtt leaves paho's socket and misc task behind when CONNECT fails or is cancelled."""
    paho = client._client
    sock = paho.socket()
    if sock is not None:
        with contextlib.suppress(OSError):
            paho._sock_close()
    task = getattr(client, "_misc_task", None)
    if task is not None:
        task.cancel()


async def connect(client: aiomqtt.Client, timeout_s: float) -> None:
    """CONNECT and wait for CONNACK; on any failure nothing of the client is left open.

    The connect runs in an executor thread that a cancel cannot stop: it is shielded and
    finished before the client is closed, or its socket would outlive us."""
    transport = client._client.on_log
    if isinstance(transport, TransportLog):
        transport.watch_connect(client)
    enter = asyncio.ensure_future(client.__aenter__())
    try:
        await asyncio.shield(enter)
        if isinstance(transport, TransportLog):
            transport.connected()
    except asyncio.CancelledError:
        await asyncio.wait({enter}, timeout=timeout_s + 1)
        if enter.done() and not enter.cancelled() and enter.exception() is None:
            with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):
                await asyncio.wait_for(client.__aexit__(None, None, None), 2)
        force_close(client)
        # A handshake that failed after the cancel (a gateway stopping during a retry; on a
        # loaded machine the handshake is slow) left its socket in the exception's frames too.
        if enter.done():
            _close_sockets_of_failed(enter)
        else:  # still in its thread: closed when it ends
            enter.add_done_callback(_close_sockets_of_failed)
        raise
    except BaseException as exc:
        force_close(client)
        _close_sockets_of(exc)
        raise


def _close_sockets_of_failed(enter: asyncio.Future[Any]) -> None:
    exc = None if enter.cancelled() else enter.exception()
    if exc is not None:
        _close_sockets_of(exc)


def _close_sockets_of(exc: BaseException) -> None:
    """paho does not close a socket whose TLS handshake failed (Client._ssl_wrap_socket); the
    exception's frames hold it. Closed here, or a gateway retrying a broker with a bad
    certificate holds one descriptor per attempt until the garbage collector runs."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        todo += [e.__cause__, e.__context__]  # aiomqtt re-raises paho's error as MqttError
        tb = e.__traceback__
        while tb is not None:
            for value in tb.tb_frame.f_locals.values():
                if isinstance(value, socket.socket) and value.fileno() != -1:
                    with contextlib.suppress(OSError):
                        value.close()
            tb = tb.tb_next


async def disconnected(client: aiomqtt.Client) -> None:
    """Returns (raising the reason) when paho drops the connection: a lost keepalive, a reset.
    aiomqtt raises it only into a pending call, so an idle session would not notice."""
    await asyncio.shield(client._disconnected)
    raise aiomqtt.MqttError("disconnected by the broker")


async def close(client: aiomqtt.Client) -> None:
    with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):
        await asyncio.wait_for(client.__aexit__(None, None, None), 2)
    force_close(client)
