"""Field kit: a blank virtual board to a verified first frame, and bytes copied.

Run: .venv/bin/python -m bench.bench_fieldkit  (prints one JSON object)

The same path as tests/test_fieldkit_provision.py, timed: a private mosquitto and a gateway
run; a blank virtual board (tools/vboard.mjs: the MicroPython WebAssembly VM behind a pty) is
plugged in; ``urbansense node provision`` compiles and copies the firmware with mpremote and
registers the node; the board's own files (its .mpy and config) boot on the MicroPython VM
(the wake cycle with the test suite's fake sensors); its frames go to the gateway, which
picked the node up from the registry file without a restart. The clock stops when the
gateway's verify stage has accepted the first frame. Then the unchanged node is provisioned
again: nothing should be copied. The virtual board's serial link is a pty fed byte by byte to
the REPL, far slower than a real USB-UART bridge at 115200 Bd would be on copies, so the copy
time here is an upper bound of nothing in particular: bytes copied is the portable figure.
"""

from __future__ import annotations

import asyncio
import binascii
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway.app import Gateway
from gateway.config import BrokerAddress, GatewayConfig
from gateway.registry import write_registry
from tests.support.mpvm import run_micropython
from tests.support.vboard import VirtualBoard
from tests.test_fieldkit_provision import BOOT_BOARD_FILES, board_mounts
from tests.test_gw_support import wait_for
from urbansense.broker import Broker
from urbansense.fieldkit.provision import Request, provision

ROOT = Path(__file__).resolve().parents[1]


async def run(tmp: Path) -> dict[str, Any]:
    registry = tmp / "site" / "nodes.jsonl"
    write_registry(registry, [])
    with Broker(tmp / "broker") as broker:
        cfg = GatewayConfig(site="bench", gateway_id="gw-1", registry=registry, data_dir=tmp / "data")
        cfg.mqtt.brokers = [BrokerAddress(broker.host, broker.port)]
        cfg.http.enabled = False
        gw = Gateway(cfg)
        task = asyncio.create_task(gw.run())
        await asyncio.wait_for(gw.started.wait(), 10)
        try:
            flash = tmp / "flash"
            t0 = time.monotonic()
            with VirtualBoard(flash) as board:
                first = await asyncio.to_thread(
                    provision, Request(board.port, "parking", "city-wroom32e", "bench", registry))
                t_prov = time.monotonic() - t0
                t1 = time.monotonic()
                again = await asyncio.to_thread(
                    provision, Request(board.port, "parking", "city-wroom32e", "bench", registry))
                t_again = time.monotonic() - t1
            t2 = time.monotonic()
            proc = await asyncio.to_thread(
                run_micropython, BOOT_BOARD_FILES, board_mounts(flash), 60)
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr)
            frames = [binascii.unhexlify(x.split()[1]) for x in proc.stdout.splitlines()
                      if x.startswith("frame ")]
            # The gateway's file-change check runs every second.
            await wait_for(lambda: gw.registry.get(first["node_id"]) is not None, 10, "registry reload")
            for f in frames:
                gw.feed(f, transport="ble", rssi_dbm=-70)
            await wait_for(lambda: gw.metrics.frames_accepted.total() >= 1, 10, "first frame verified")
            t_end = time.monotonic()
        finally:
            await gw.stop()
            await task
    return {
        "command": ".venv/bin/python -m bench.bench_fieldkit",
        # the re-provision in between is not part of it
        "blank_to_verified_s": round(t_prov + (t_end - t2), 2),
        "provision_s": round(t_prov, 2),
        "boot_and_verify_s": round(t_end - t2, 2),
        "first_provision": {k: first[k] for k in ("files_copied", "bytes_copied", "files_unchanged")},
        "reprovision": {k: again[k] for k in ("files_copied", "bytes_copied", "files_unchanged")},
        "reprovision_s": round(t_again, 2),
        "frames_from_first_wake": len(frames),
    }


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-fieldkit-") as tmp:
        print(json.dumps(asyncio.run(run(Path(tmp)))))


if __name__ == "__main__":
    main()
