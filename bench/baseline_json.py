"""The peer for the gateway benchmark: what common gateways do with the same frames.

Each verified frame becomes one JSON telemetry message (ThingsBoard gateway format,
topic ``v1/gateway/telemetry``) published at QoS 1 with paho-mqtt, no batching, no outbox.
At most ``inflight`` messages wait for their PUBACK: the producer waits for a slot, as our
publisher does. Left to paho's own queue beyond max_inflight, with publish() on this thread
and the network loop on paho's, ~15 % of the PUBACK callbacks never came once verify got
faster (paho-mqtt 2.2), and the run hung.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from bench.frames import Workload
from urbansense.wire.protocol import NodeKeys, parse_header, verify_uplink
from urbansense.wire.quantities import QUANTITIES

TOPIC = "v1/gateway/telemetry"


def run(host: str, port: int, work: Workload, inflight: int = 100) -> dict[str, Any]:
    keys = {nid: NodeKeys(k) for nid, k in work.keys.items()}
    last: dict[int, int] = {}
    done = threading.Event()
    acked = 0
    total = len(work.frames)

    window = threading.BoundedSemaphore(inflight)

    def on_publish(client: mqtt.Client, userdata: object, mid: int, rc: object, props: object) -> None:
        nonlocal acked
        acked += 1
        window.release()
        if acked == total:
            done.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-baseline", protocol=mqtt.MQTTv311)
    client.max_inflight_messages_set(inflight)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    connected = threading.Event()
    client.on_connect = lambda *a: connected.set()
    client.connect(host, port)
    client.loop_start()
    if not connected.wait(10):
        raise RuntimeError("baseline could not connect to the broker")
    payload_bytes = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for frame in work.frames:
        hdr = parse_header(frame)
        up = verify_uplink(keys[hdr.node_id], frame, hdr, last.get(hdr.node_id))
        last[hdr.node_id] = up.fcnt
        values = {}
        for k, v in up.readings.items():
            q = QUANTITIES[k]
            values[q.field] = v
        payload = json.dumps({f"node-{up.node_id:08x}": [{"ts": int(time.time() * 1000), "values": values}]})
        payload_bytes += len(payload) + len(TOPIC) + 2 + 2 + 2  # + MQTT fixed/var header estimate
        if not window.acquire(timeout=60):
            raise RuntimeError(f"baseline: no PUBACK for 60 s ({acked}/{total})")
        client.publish(TOPIC, payload, qos=1)
    if not done.wait(300):
        raise RuntimeError(f"baseline: only {acked}/{total} PUBACKs")
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    client.loop_stop()
    client.disconnect()
    return {
        "frames": total,
        "wall_s": wall,
        "frames_per_s": total / wall,
        "cpu_us_per_frame": cpu / total * 1e6,
        "mqtt_bytes_per_reading": payload_bytes / total,
    }
