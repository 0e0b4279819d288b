"""``urbansense node verify``: wait for a node's first verified frame at the gateway.

Polls the gateway's /api/status (the same JSON as ``urbansense gateway status --json``): the
node is verified once its entry in ``nodes`` has a ``last_seen_s`` (frames reach that table
only after verify accepted them). On a timeout the likely cause comes from what the gateway
counted for that node: its last rejection (``rejected_nodes``: wrong key -> ``bad_mic``, not
in the gateway's registry -> ``unknown_node``, revoked, counters behind) or, if nothing with
its id was heard at all, the gateway's BLE and serial state. With ``--port`` the node's serial
output is shown meanwhile.

With ``--mqtt HOST[:PORT]`` instead, it waits at the broker: subscribed to every gateway's
``urbansense/v1/+/+/up``, the node is verified once a pack holds one of its frames (gateways
publish only frames their verify stage accepted). The broker cannot say why a frame is
missing, so a timeout there only says so and points at ``--gateway``.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from urbansense.fieldkit._errors import FieldError

CAUSES = {
    "bad_mic": ("heard, but its frames do not verify: the key on the board is not the one in the "
                "gateway's registry",
                "re-provision the board against this site's registry (`urbansense node provision ... "
                "--registry` with the gateway's file), or check that the gateway reads that file"),
    "unknown_node": ("heard, but the gateway does not know the node id",
                     "check that gateway.registry is the file provision wrote and that the reload worked "
                     "(`urbansense gateway status --json`: registry.last_error), or send the gateway SIGHUP"),
    "revoked_node": ("heard, but the node is revoked in the registry",
                     "provision the board again as a new node (revoked ids are never reused)"),
    "replay": ("heard, but its frame counter is behind what the gateway accepted before",
               "the board was re-flashed with an old identity: provision it as a new node"),
}


def fetch_status(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/api/status", timeout=5) as resp:
            data: dict[str, Any] = json.load(resp)
            return data
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise FieldError(f"gateway not reachable at {url}: {exc}",
                         "check the address (--gateway http://HOST:9105) and that the gateway runs") from None


def _seen(status: dict[str, Any], node_id: int) -> dict[str, Any] | None:
    for n in status.get("nodes", []):
        if n.get("node_id") == node_id and n.get("last_seen_s"):
            return dict(n)
    return None


def diagnose(status: dict[str, Any], node_id: int) -> tuple[str, str]:
    """-> (likely cause, next step) for a node not verified."""
    rej = status.get("rejected_nodes", {}).get(f"{node_id:08x}")
    if rej is not None:
        cause, step = CAUSES.get(rej["reason"], (f"heard, but rejected ({rej['reason']})",
                                                 "send the gateway's status to the network team"))
        rssi = f", RSSI {rej['rssi_dbm']} dBm" if rej.get("rssi_dbm") is not None else ""
        return f"{cause} ({rej['count']} frames{rssi})", step
    ble = status.get("ble")
    links = []
    if ble is not None:
        links.append("BLE scanner " + ("healthy" if ble.get("healthy") else "NOT hearing adverts"))
    for s in status.get("serial", []):
        links.append(f"serial {s.get('port')} {'open' if s.get('open') else 'CLOSED'}")
    return ("not heard at all: no frame with this node id reached the gateway"
            + (f" ({', '.join(links)})" if links else ""),
            "check the board is powered and provisioned (`urbansense node doctor --port PORT`), that it "
            "is in range of the gateway (move the gateway's antenna or the board closer), and that the "
            "node's ble.company_id matches the gateway's ble.company_id")


def wait_verified(url: str, node_id: int, timeout_s: float, poll_s: float = 1.0,
                  on_tick: Callable[[], None] | None = None) -> dict[str, Any]:
    """-> the node's status entry once verified; FieldError (exit 3) naming the cause on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = fetch_status(url)
        seen = _seen(status, node_id)
        if seen is not None:
            return seen
        if time.monotonic() >= deadline:
            cause, step = diagnose(status, node_id)
            raise FieldError(f"node {node_id:08x} not verified within {timeout_s:.0f} s: {cause}", step,
                             exit_code=3)
        if on_tick is not None:
            on_tick()
        time.sleep(poll_s)  # polling a remote HTTP endpoint: there is nothing local to wait on


UP_TOPIC = "urbansense/v1/+/+/up"


def parse_broker(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":") if ":" in text else (text, "", "1883")
    try:
        return host, int(port)
    except ValueError:
        raise FieldError(f"not a broker address: {text!r}", "use --mqtt HOST or HOST:PORT", exit_code=2) from None


async def _first_published(host: str, port: int, node_id: int, on_tick: Callable[[], None] | None) -> dict[str, Any]:
    import aiomqtt

    from urbansense.wire.senml_reader import read_frames

    async def ticks(tick: Callable[[], None]) -> None:
        while True:
            tick()
            await asyncio.sleep(0.2)

    ticker = asyncio.create_task(ticks(on_tick)) if on_tick is not None else None
    try:
        async with aiomqtt.Client(host, port, identifier=f"urbansense-verify-{node_id:08x}") as client:
            await client.subscribe(UP_TOPIC, qos=1)
            async for msg in client.messages:
                if not isinstance(msg.payload, (bytes, bytearray)):
                    continue
                try:
                    frames = read_frames(bytes(msg.payload))
                except ValueError:
                    continue  # not one of our packs: not this node's either
                for nid, fcnt, _t, records in frames:
                    if nid == node_id:
                        values = {name: value for name, value, _u in records}
                        return {"frames": 1, "fcnt": fcnt, "topic": str(msg.topic), "transport": "mqtt",
                                "rssi_dbm": values.get("rssi")}
    finally:
        if ticker is not None:
            ticker.cancel()
    raise FieldError("the broker closed the subscription", "run the same command again")


def wait_published(broker: str, node_id: int, timeout_s: float,
                   on_tick: Callable[[], None] | None = None) -> dict[str, Any]:
    """-> the first of the node's frames a gateway published; FieldError (exit 3) on timeout."""
    from aiomqtt import MqttError

    host, port = parse_broker(broker)
    try:
        return asyncio.run(asyncio.wait_for(_first_published(host, port, node_id, on_tick), timeout_s))
    except TimeoutError:
        raise FieldError(f"node {node_id:08x}: no frame of it published at {broker} within {timeout_s:.0f} s",
                         "the broker cannot tell why: run `urbansense node verify --node N --gateway "
                         "http://GATEWAY:9105` for the gateway's view (not heard, wrong key, ...)",
                         exit_code=3) from None
    except (MqttError, OSError) as exc:
        raise FieldError(f"broker not reachable at {broker}: {exc}",
                         "check the address (--mqtt HOST:PORT) and that the broker runs") from None
