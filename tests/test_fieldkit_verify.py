"""``urbansense node verify`` against a running gateway's status endpoint: verified, or the
likely cause named from what the gateway counted for that node."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.test_gw_support import KEYS, frame, make_config, wait_for
from urbansense.cli import main


async def _verify(capsys: pytest.CaptureFixture[str], url: str, node: str, wait: str = "5s") -> tuple[int, Any]:
    rc = await asyncio.to_thread(main, ["node", "verify", "--node", node, "--gateway", url,
                                        "--timeout", wait, "--json"])
    return rc, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.timeout(60)
async def test_verified_or_the_likely_cause(tmp_path: Path, mqtt_broker: Any, running: Any,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    gw = await running(make_config(tmp_path, mqtt_broker, nodes=range(1, 4)))
    url = f"http://127.0.0.1:{gw.http_port}"
    gw.feed(frame(1, 1), transport="ble", rssi_dbm=-80)
    gw.feed(frame(3, 1, key=KEYS[9]), transport="ble", rssi_dbm=-97)  # a board with another key
    gw.feed(frame(7, 1), transport="ble")  # a node this gateway's registry does not have
    await wait_for(lambda: gw.metrics.rejections.total() == 2, what="two rejections")

    rc, res = await _verify(capsys, url, "00000001")
    assert rc == 0 and res["ok"] and res["node_id"] == 1 and res["frames"] >= 1

    rc, res = await _verify(capsys, url, "3", "1s")
    assert rc == 3 and "do not verify" in res["error"] and "RSSI -97 dBm" in res["error"]
    assert "re-provision" in res["next"]

    rc, res = await _verify(capsys, url, "7", "1s")
    assert rc == 3 and "does not know the node id" in res["error"] and "registry" in res["next"]

    rc, res = await _verify(capsys, url, "2", "1s")
    assert rc == 3 and "not heard at all" in res["error"] and "company_id" in res["next"]


async def test_an_unreachable_gateway(capsys: pytest.CaptureFixture[str]) -> None:
    rc, res = await _verify(capsys, "http://127.0.0.1:9", "1", "1s")
    assert rc == 1 and "not reachable" in res["error"] and "--gateway" in res["next"]


@pytest.mark.timeout(60)
async def test_verify_shows_the_nodes_serial_log_while_waiting(
        tmp_path: Path, mqtt_broker: Any, running: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import os

    gw = await running(make_config(tmp_path, mqtt_broker, nodes=range(1, 2)))
    master, slave = os.openpty()

    async def node_prints() -> None:  # the node's console, a line every 0.2 s (opening flushes)
        while True:
            os.write(master, b"urbansense: SAFE MODE: serial.rx must be set with serial.tx\r\n")
            await asyncio.sleep(0.2)

    printer = asyncio.create_task(node_prints())
    try:
        rc = await asyncio.to_thread(main, ["node", "verify", "--node", "1", "--gateway",
                                            f"http://127.0.0.1:{gw.http_port}", "--timeout", "2s",
                                            "--port", os.ttyname(slave)])
    finally:
        printer.cancel()
        await asyncio.gather(printer, return_exceptions=True)
        os.close(master)
        os.close(slave)
    err = capsys.readouterr().err
    assert rc == 3 and "SAFE MODE: serial.rx" in err and "not heard at all" in err


@pytest.mark.timeout(60)
async def test_verify_at_the_broker(tmp_path: Path, mqtt_broker: Any, running: Any,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """--mqtt: the node's first frame that a gateway published; a timeout sends to --gateway."""
    gw = await running(make_config(tmp_path, mqtt_broker, nodes=range(1, 3)))
    broker = f"{mqtt_broker.host}:{mqtt_broker.port}"
    waiting = asyncio.create_task(asyncio.to_thread(
        main, ["node", "verify", "--node", "00000001", "--mqtt", broker, "--timeout", "20s", "--json"]))
    fcnt = 0
    while not waiting.done():  # the node wakes and reports until verify has seen a frame
        fcnt += 1
        gw.feed(frame(2, fcnt), transport="ble")  # another node: not it
        gw.feed(frame(1, fcnt), transport="ble", rssi_dbm=-75)
        await asyncio.wait([waiting], timeout=0.3)
    rc = waiting.result()
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and res["ok"] and res["node_id"] == 1 and res["transport"] == "mqtt"
    assert res["topic"] == "urbansense/v1/test-site/gw-1/up" and 1 <= res["fcnt"] <= fcnt
    rc = await asyncio.to_thread(main, ["node", "verify", "--node", "2", "--mqtt", broker, "--timeout", "1s", "--json"])
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 3 and "no frame of it published" in res["error"] and "--gateway" in res["next"]
    rc = await asyncio.to_thread(main, ["node", "verify", "--node", "2", "--mqtt", "127.0.0.1:9", "--timeout", "5s",
                                        "--json"])
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 1 and "broker not reachable" in res["error"]
