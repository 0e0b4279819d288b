"""The collector's figures (Prometheus text through the gateway's metric types) and its HTTP
endpoint: ``/metrics`` and ``/api/status`` (what ``urbansense collector status`` prints)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, Final

from gateway.metrics import Counter, Gauge, Histogram

_LATENCY_BUCKETS_S: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_MAX_REQUEST: Final = 8192


class CollectorMetrics:
    def __init__(self) -> None:
        p = "urbansense_collector_"
        self.messages = Counter(p + "messages_total", "messages taken off the bus, by topic leaf", "leaf")
        self.readings_in = Counter(p + "readings_in_total", "frames decoded (a frame per gateway that forwarded it)")
        self.stored = Counter(p + "readings_stored_total", "readings newly stored (once per node and frame counter)")
        self.duplicates = Counter(p + "readings_duplicate_total", "frames already stored (another gateway, a redelivery)")
        self.dead_letters = Counter(p + "dead_letters_total", "messages sent to the dead-letter subject, by reason", "reason")
        self.store_errors = Counter(p + "store_errors_total", "transactions the database did not take (retried)", "kind")
        self.commits = Counter(p + "commits_total", "transactions committed")
        self.acked = Counter(p + "messages_acked_total", "messages acknowledged after their commit")
        self.pending = Gauge(p + "pending_messages", "messages waiting in the consumer (JetStream: pending + unacknowledged)")
        self.latency = Histogram(p + "reading_latency_seconds",
                                 "gateway receive time to database commit, per stored reading",
                                 _LATENCY_BUCKETS_S)
        self.commit_seconds = Histogram(p + "commit_seconds", "time to commit one batch", _LATENCY_BUCKETS_S)

    def all(self) -> list[Counter | Histogram]:
        return [self.messages, self.readings_in, self.stored, self.duplicates, self.dead_letters,
                self.store_errors, self.commits, self.acked, self.pending, self.latency,
                self.commit_seconds]

    def render(self) -> str:
        return "\n".join(line for m in self.all() for line in m.render()) + "\n"


async def start_http(metrics: CollectorMetrics, status: Callable[[], dict[str, Any]],
                     host: str, port: int) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            path = target.split("?", 1)[0]
            if method != "GET":
                code, ctype, body = "405 Method Not Allowed", "text/plain", b"read-only\n"
            elif path == "/metrics":
                code, ctype = "200 OK", "text/plain; version=0.0.4; charset=utf-8"
                body = metrics.render().encode()
            elif path == "/api/status":
                code, ctype, body = "200 OK", "application/json", json.dumps(status()).encode()
            else:
                code, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            writer.write(f"HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         "Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ValueError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port, limit=_MAX_REQUEST)
