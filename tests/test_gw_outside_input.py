"""Outside bytes the gateway cannot use are counted under a reason and exported on /metrics, and
a bug inside the gateway is never counted as one of them (real gateway, real ptys, real broker)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path
from typing import Any

import cbor2
import pytest

from gateway.transports.datagram import send_advert
from tests.test_gw_support import PtyNode, frame, make_config, wait_for
from urbansense.wire import framing
from urbansense.wire.advert import decode_advert, encode_advert

ROOT = Path(__file__).resolve().parents[1]


async def _get(port: int, path: str) -> str:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await asyncio.wait_for(r.read(), 10)
    w.close()
    return data.partition(b"\r\n\r\n")[2].decode()


async def _write_all(fd: int, data: bytes) -> None:
    """All of ``data`` into a non-blocking pty master, waiting for room (a pty holds ~4 KiB)."""
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view[:65536]):]
        except BlockingIOError:
            room: asyncio.Future[None] = loop.create_future()
            loop.add_writer(fd, room.set_result, None)
            try:
                await asyncio.wait_for(room, 10)
            finally:
                loop.remove_writer(fd)


async def test_serial_overruns_are_counted_too_long_and_lose_nothing_after(
    tmp_path: Path, mqtt_broker: Any, running: Any
) -> None:
    """A 300-byte packet and a megabyte without a delimiter: two too_long rejections, and the
    frame after each still gets through."""
    node = PtyNode()
    gw = await running(make_config(tmp_path, mqtt_broker, serial__ports=[node.path]))
    await asyncio.wait_for(gw.serial_ports[0].opened.wait(), 5)
    await _write_all(node.master, b"\x01" * (framing.MAX_PACKET_LEN + 44) + b"\x00")
    node.send(frame(1, 1))
    await _write_all(node.master, b"\x55" * (1 << 20))
    await _write_all(node.master, b"\x00" + framing.wrap(frame(1, 2)))
    await wait_for(lambda: gw.metrics.readings_committed.total() == 2, timeout_s=30, what="both frames")
    assert gw.metrics.rejections.values["too_long"] == 2
    assert gw.metrics.frames_in.get("serial") == 4 == 2 + gw.metrics.rejections.total()
    text = await _get(gw.http_port, "/metrics")
    assert 'urbansense_gateway_rejections_total{reason="too_long"} 2' in text
    assert 'urbansense_gateway_frames_in_total{transport="serial"} 4' in text
    node.close()


async def test_a_packet_of_exactly_the_limit_is_not_an_overrun(
    tmp_path: Path, mqtt_broker: Any, running: Any
) -> None:
    node = PtyNode()
    gw = await running(make_config(tmp_path, mqtt_broker, serial__ports=[node.path]))
    await asyncio.wait_for(gw.serial_ports[0].opened.wait(), 5)
    await _write_all(node.master, b"\x01" * framing.MAX_PACKET_LEN + b"\x00")  # bad COBS, not long
    node.send(frame(1, 1))
    await wait_for(lambda: gw.metrics.readings_committed.total() == 1, what="the frame after")
    assert gw.metrics.rejections.values["too_long"] == 0
    assert gw.metrics.rejections.total() == 1
    node.close()


async def test_a_bug_in_verify_is_counted_apart_and_logged_loudly(
    tmp_path: Path, mqtt_broker: Any, running: Any, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An internal error is not outside bytes: ``internal_errors{stage="verify"}``, not
    ``malformed_body``, and an ERROR with its traceback (once; repeats are rate-limited)."""
    gw = await running(make_config(tmp_path, mqtt_broker))
    verifier = gw.verifier
    real = verifier._process
    calls = [0]

    def buggy(h: Any) -> Any:
        calls[0] += 1
        if calls[0] <= 2:
            raise KeyError("a bug")
        return real(h)

    monkeypatch.setattr(verifier, "_process", buggy)
    with caplog.at_level(logging.ERROR, logger="gateway.verify"):
        for fcnt in (1, 2, 3):
            gw.feed(frame(1, fcnt), "test")
        await wait_for(lambda: gw.metrics.readings_committed.total() == 1, what="the frame after")
    assert gw.metrics.rejections.values["malformed_body"] == 0
    assert gw.metrics.internal_errors.get("verify") == 2
    m = gw.metrics
    assert m.frames_in.total() == 3 == (m.frames_accepted.total() + m.duplicates.total()
                                        + m.rejections.total() + m.internal_errors.total())
    bugs = [r for r in caplog.records if "event=verify_bug" in r.getMessage()]
    assert len(bugs) == 1 and bugs[0].levelno == logging.ERROR
    assert "KeyError" in bugs[0].getMessage() and "Traceback" in bugs[0].getMessage()
    text = await _get(gw.http_port, "/metrics")
    assert 'urbansense_gateway_internal_errors_total{stage="verify"} 2' in text


# -- the datagram input (docs/GATEWAY.md "Datagram input") ----------------------------------


def test_the_documented_datagram_example_is_the_encoding() -> None:
    frame16 = bytes(range(16))
    address = "AA:BB:CC:00:00:01"
    expected = (b"\x83" + b"\x71" + address.encode() + b"\x38\x3b" + b"\xa1\x19\xff\xff\x50" + frame16)
    assert encode_advert(address, -60, {0xFFFF: frame16}) == expected
    assert decode_advert(expected) == (address, -60, {0xFFFF: frame16})
    assert "`38 3B` (-60), `A1 19 FF FF 50`" in (ROOT / "docs" / "GATEWAY.md").read_text()


@pytest.mark.parametrize(("data", "why"), [
    (b"\xff", "not CBOR"),
    (cbor2.dumps(["AA", -60]), "two items"),
    (cbor2.dumps(["AA", -60, {0xFFFF: b"x"}]) + b"\x00", "bytes after the array"),
    (cbor2.dumps([b"AA", -60, {}]), "address not text"),
    (cbor2.dumps(["A" * 65, -60, {}]), "address too long"),
    (cbor2.dumps(["AA", -128, {}]), "rssi below -127"),
    (cbor2.dumps(["AA", True, {}]), "rssi a boolean"),
    (cbor2.dumps(["AA", -60, {0x10000: b"x"}]), "company id above 0xFFFF"),
    (cbor2.dumps(["AA", -60, {1: "text"}]), "manufacturer data not bytes"),
    (cbor2.dumps(["AA", -60, {1: bytes(28)}]), "manufacturer data over 27 bytes"),
    (cbor2.dumps(["AA", -60, {1: bytes(27)}, "x" * 600])[:513], "over 512 bytes"),
])
def test_a_datagram_that_is_no_advert_is_refused(data: bytes, why: str) -> None:
    with pytest.raises(ValueError, match="advert"):
        decode_advert(data)


async def test_the_datagram_input_counts_what_is_no_advert_and_hears_the_rest(
    tmp_path: Path, mqtt_broker: Any, running: Any
) -> None:
    air = str(tmp_path / "air.sock")
    gw = await running(make_config(tmp_path, mqtt_broker, ble__enabled=True,
                                   ble__backend="datagram", ble__datagram_socket=air))
    assert gw.ble is not None
    await asyncio.wait_for(gw.ble.started.wait(), 5)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"\xff", air)
        s.sendto(encode_advert("AA:BB:CC:00:00:01", -60, {0xFFFF: frame(1, 1)}) + b"\x00", air)
        s.sendto(encode_advert("A" * 500, -60, {}), air)  # over 512 bytes
    send_advert(air, "AA:BB:CC:00:00:01", -60, {0xFFFF: frame(1, 2)})
    await wait_for(lambda: gw.metrics.readings_committed.total() == 1, what="the good advert")
    assert gw.metrics.datagrams_malformed.total() == 3
    assert gw.metrics.frames_in.total() == 1 and gw.metrics.rejections.total() == 0
    assert "urbansense_gateway_datagrams_malformed_total 3" in await _get(gw.http_port, "/metrics")


def test_the_datagram_scanners_device_table_stays_bounded_on_rotating_addresses() -> None:
    """Phones rotate random addresses: a street's scan used to keep every address it ever heard
    (one BLEDevice and AdvertisementData each) for as long as it ran."""
    from gateway.transports.datagram import SEEN_DEVICES_MAX, DatagramScanner

    heard: list[str] = []
    scanner = DatagramScanner(lambda d, a: heard.append(d.address), None, datagram_socket="unused")
    for i in range(3 * SEEN_DEVICES_MAX):
        scanner._deliver(encode_advert(f"{i:012X}", -70, {0x004C: b"\x02\x15"}))
    assert len(heard) == 3 * SEEN_DEVICES_MAX  # every advert still reaches the callback
    assert 0 < len(scanner.seen_devices) <= SEEN_DEVICES_MAX
