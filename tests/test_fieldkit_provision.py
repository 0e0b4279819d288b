"""``urbansense node provision`` against the virtual board (tests/support/vboard.py), end to
end: the board's own files then run on the MicroPython VM (the copied .mpy) and in the
simulator (simulator/board_flash.py: its config and board files as copied, its firmware
checked to be what was copied), and a gateway that picked the node up from the registry
without a restart verifies the simulated node's first frame."""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import serial

from gateway.registry import write_registry
from simulator.sim import Simulation
from tests.support.mpvm import missing_reason, run_micropython
from tests.support.vboard import VirtualBoard
from tests.test_gw_support import make_config, wait_for
from urbansense.cli import main
from urbansense.fieldkit import FieldError, build, nodeconfig
from urbansense.fieldkit.boardlink import connect
from urbansense.fieldkit.provision import Request, provision
from urbansense.fieldkit.siteregistry import SiteRegistry
from urbansense.wire.protocol import NodeKeys, parse_header, verify_uplink

ROOT = Path(__file__).resolve().parents[1]
# The fake HAL and what it imports from the simulator, as tests/test_fw_vm.py mounts them.
FAKE_SOURCES = (ROOT / "tests" / "fw_fakes.py", ROOT / "simulator" / "esp32_port.py",
                ROOT / "simulator" / "part_registers.py")
pytestmark = [pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason())),
              pytest.mark.timeout(120)]

BOOT_BOARD_FILES = r"""
import sys, json, binascii
sys.path.append('/fw')
import fw_fakes
board_json = open('/board/board.json').read()
w = fw_fakes.make_world('parking', board=json.loads(board_json))
w.files['config.json'] = open('/board/config.json').read()
w.files['board.json'] = board_json
import us_node
print('module', us_node.__file__)
ms = w.run_cycle(us_node)
print('sleep_ms', ms)
for f in w.frames():
    print('frame', binascii.hexlify(f).decode())
"""


def board_mounts(flash: Path) -> dict[str, str]:
    """The board's flash as the VM sees it: its lib/ (the copied .mpy) on /lib, its files on
    /board, and the fake HAL (with what it imports from the simulator) on /fw."""
    return {str(flash / "lib"): "/lib", str(flash): "/board",
            **{str(p): f"/fw/{p.name}" for p in FAKE_SOURCES}}


def _provision(port: str, registry: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, Any]:
    rc = main(["node", "provision", "--port", port, "--kind", "parking", "--board", "city-wroom32e",
               "--site", "angers-centre", "--registry", str(registry), "--json", *extra])
    out = capsys.readouterr().out
    return rc, json.loads(out.strip().splitlines()[-1])


async def test_blank_board_to_a_verified_first_frame(
        tmp_path: Path, mqtt_broker: Any, running: Any, capsys: pytest.CaptureFixture[str]) -> None:
    registry = tmp_path / "site" / "nodes.jsonl"
    write_registry(registry, [])
    air = str(tmp_path / "air.sock")
    gw = await running(_cfg(tmp_path, mqtt_broker, registry, air))
    assert gw.ble is not None
    await asyncio.wait_for(gw.ble.started.wait(), 5)
    flash = tmp_path / "flash"
    with VirtualBoard(flash) as board:
        label = tmp_path / "label.png"
        rc, res = _provision(board.port, registry, capsys, "--label-png", str(label))
        assert rc == 0 and res["ok"] and res["files_copied"] >= 20 and res["bytes_copied"] > 20000
        # What the board's boot banner says; the VM's MicroPython is not the pinned image's.
        assert res["self_check"]["banner"].startswith("MicroPython v1.")
        assert res["warnings"] == [f"the board runs MicroPython {res['self_check']['micropython']}, "
                                   "boards/city-wroom32e.json pins 1.25.0: flash the pinned image "
                                   "(`urbansense node flash --port PORT --board city-wroom32e`) unless "
                                   "this one is known to work"]
        assert label.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        node_id = res["node_id"]
        key = SiteRegistry(registry).records()[0]["key"]
        assert key not in json.dumps(res)  # never printed
        assert stat.S_IMODE(registry.stat().st_mode) == 0o600
        # A re-provision of the unchanged node copies nothing and keeps the identity.
        rc, again = _provision(board.port, registry, capsys)
        assert rc == 0 and again["bytes_copied"] == 0 and again["reused_identity"]
        assert again["node_id"] == node_id and len(SiteRegistry(registry).records()) == 1
    # The gateway picked the node up from the registry file, without a restart.
    await wait_for(lambda: gw.registry.get(node_id) is not None, what="registry reload")
    # What was copied runs: the board's .mpy files and config on the MicroPython VM build a
    # frame that the key provisioning generated verifies.
    proc = run_micropython(BOOT_BOARD_FILES, mounts=board_mounts(flash), timeout_s=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "module /lib/us_node.mpy" in lines
    frames = [binascii.unhexlify(x.split()[1]) for x in lines if x.startswith("frame ")]
    assert frames, proc.stdout
    up = verify_uplink(NodeKeys(bytes.fromhex(key)), frames[0], parse_header(frames[0]), None)
    assert up.node_id == node_id
    # The simulator boots that board's files (its config.json and board.json as copied; its
    # firmware only once the copied .mpy are what this tree compiles to) and its first advert
    # reaches the gateway over the air, which verifies it with the provisioned key.
    sim = Simulation({"sim": {"name": "fieldkit", "seed": 3, "duration": "2h"},
                      "gateways": [{"id": "gw-1", "x": 0.0, "y": 0.0, "sim_socket": air}],
                      "nodes": [{"flash": str(flash), "area": [0, 0, 5, 5]}]})
    assert [(n.node_id, n.key_hex) for n in sim.registry()] == [(node_id, key)]
    th = sim.start_realtime(7200.0, speed=1200.0)
    try:
        await wait_for(lambda: gw.metrics.frames_accepted.total() >= 1, timeout_s=30, what="first frame verified")
    finally:
        sim.stop()
        await asyncio.to_thread(th.join, 30.0)
        sim.close()
    assert gw.metrics.rejections.total() == 0
    await wait_for(lambda: any(n["node_id"] == node_id and n["last_seen_s"] for n in gw.status()["nodes"]),
                   what="the node seen on the status page")


def test_the_simulator_refuses_a_board_whose_firmware_is_not_this_trees(tmp_path: Path) -> None:
    flash = tmp_path / "flash"  # the files provision writes (build.node_files), without a board
    board = nodeconfig.load_board("city-wroom32e")
    cfg = nodeconfig.make_config(7, bytes(range(16)), "parking", board)
    files = build.node_files("ESP32", (json.dumps(cfg) + "\n").encode(), nodeconfig.board_json_for_node(board))
    for path, data in files.items():
        (flash / path).parent.mkdir(parents=True, exist_ok=True)
        (flash / path).write_bytes(data)
    scenario = {"sim": {"name": "x"}, "nodes": [{"flash": str(flash)}]}
    Simulation(scenario).close()  # as copied: taken
    (flash / "lib" / "us_cobs.mpy").write_bytes(b"M\x06 other firmware")
    with pytest.raises(ValueError, match=r"lib/us_cobs\.mpy is different"):
        Simulation(scenario)
    (flash / "lib" / "us_cobs.mpy").unlink()
    with pytest.raises(ValueError, match=r"lib/us_cobs\.mpy is missing"):
        Simulation(scenario)


def _cfg(tmp_path: Path, broker: Any, registry: Path, air: str | None = None) -> Any:
    cfg = make_config(tmp_path / "gw", broker, nodes=range(0))
    cfg.registry = registry
    if air is not None:
        cfg.ble.enabled = True
        cfg.ble.backend = "datagram"
        cfg.ble.datagram_socket = air
    return cfg


def test_a_pulled_cable_mid_copy_resumes_without_a_second_id(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    registry = tmp_path / "nodes.jsonl"
    board = VirtualBoard(tmp_path / "flash")
    board.plug_in()
    copied: list[str] = []

    def pull_after_some(path: str, done: int, total: int) -> None:
        if done >= total:
            copied.append(path)
        if len(copied) == 6:
            board.pull_cable()

    try:
        with pytest.raises(FieldError) as ei:
            provision(Request(board.port, "parking", "city-wroom32e", "s", registry), pull_after_some)
        assert "lost the board" in ei.value.problem and "resumes" in ei.value.next_step
        board.plug_in()  # back in, maybe under another name
        res = provision(Request(board.port, "parking", "city-wroom32e", "s", registry))
        assert res["reused_identity"] and res["node_id"] == 1
        assert res["files_unchanged"] >= 5 and res["files_copied"] >= 1
        assert [r["node_id"] for r in SiteRegistry(registry).records()] == [1]
    finally:
        board.close()


def test_a_copy_that_lands_different_is_refused_and_the_rerun_copies_it_again(tmp_path: Path) -> None:
    """Each copy is checked by its SHA-256 on the board: a file that lands with one byte changed
    (a flaky cable, worn flash; here the write itself changes the last byte) is an error that
    says to run again, and the re-run copies it, not trusting what the board holds."""
    with VirtualBoard(tmp_path / "flash") as board, connect(board.port) as link:
        write = link.t.fs_writefile

        def one_byte_changed(path: str, data: bytes, progress_callback: Any = None) -> None:
            write(path, data[:-1] + bytes([data[-1] ^ 1]), progress_callback=progress_callback)
        link.t.fs_writefile = one_byte_changed  # type: ignore[method-assign]
        with pytest.raises(FieldError) as ei:
            link.sync({"lib/x.txt": b"what was sent"})
        assert "does not match what was sent" in ei.value.problem
        assert "run the same command again" in ei.value.next_step
        link.t.fs_writefile = write  # type: ignore[method-assign]
        assert link.sync({"lib/x.txt": b"what was sent"})["files_copied"] == 1
    assert (tmp_path / "flash" / "lib" / "x.txt").read_bytes() == b"what was sent"


def test_no_such_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["node", "provision", "--port", str(tmp_path / "ttyUSB9"), "--kind", "bin", "--board",
               "city-wroom32e", "--site", "s", "--registry", str(tmp_path / "r.jsonl")])
    err = capsys.readouterr().err
    assert rc == 1 and "no serial port" in err and "--port" in err
    assert not (tmp_path / "r.jsonl").exists()  # nothing registered for a board never reached


def test_a_busy_port_names_the_cause(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with VirtualBoard(tmp_path / "flash") as board, serial.Serial(board.port, exclusive=True):
        rc = main(["node", "provision", "--port", board.port, "--kind", "bin", "--board",
                   "city-wroom32e", "--site", "s", "--registry", str(tmp_path / "r.jsonl")])
    err = capsys.readouterr().err
    assert rc == 1 and "in use by another program" in err


def test_a_port_without_micropython(tmp_path: Path) -> None:
    master, slave = os.openpty()
    try:
        with pytest.raises(FieldError) as ei:
            provision(Request(os.ttyname(slave), "bin", "city-wroom32e", "s", tmp_path / "r.jsonl",
                              connect_timeout_s=1.0))
        assert "no MicroPython REPL" in ei.value.problem and "node flash" in ei.value.next_step
    finally:
        for fd in (master, slave):
            with contextlib.suppress(OSError):
                os.close(fd)


def test_an_unknown_board_or_taken_id_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reg = tmp_path / "r.jsonl"
    rc = main(["node", "provision", "--port", "/dev/null", "--kind", "bin", "--board", "city-wroom99",
               "--site", "s", "--registry", str(reg)])
    assert rc == 2 and "city-wroom32e" in capsys.readouterr().err
    SiteRegistry(reg).add("bin", node_id=5)
    with VirtualBoard(tmp_path / "flash") as board:
        rc, res = _provision(board.port, reg, capsys, "--node-id", "5")
    assert rc == 2 and "already in use" in res["error"]
    assert len(SiteRegistry(reg).records()) == 1


def test_doctor_on_a_provisioned_virtual_board(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The self-test runs what the board can (no `machine` on the VM: hardware skipped)."""
    with VirtualBoard(tmp_path / "flash") as board:
        rc = main(["node", "doctor", "--port", board.port, "--json"])
        res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert rc == 1 and "not provisioned" in res["error"]
        provision(Request(board.port, "water", "city-wroom32e", "s", tmp_path / "r.jsonl"))
        rc = main(["node", "doctor", "--port", board.port, "--json"])
        res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert rc == 0 and res["ok"] and res["kind"] == "water" and res["stale_files"] == []
        assert res["self_check"]["fw"] >= 100 and res["hardware"]["heap_free"] > 0
        assert res["hardware"]["hardware"].startswith("skipped")
        # A firmware file that differs from the laptop's build is named.
        from mpremote.transport_serial import SerialTransport

        t = SerialTransport(board.port)
        t.enter_raw_repl(soft_reset=False)
        t.fs_writefile("lib/us_cobs.mpy", b"junk")
        t.exit_raw_repl()
        t.close()
        rc = main(["node", "doctor", "--port", board.port, "--json"])
        res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert rc == 1 and "lib/us_cobs.mpy" in res["stale_files"]


def test_a_full_filesystem_says_to_reflash(tmp_path: Path) -> None:
    with VirtualBoard(tmp_path / "flash", flash_bytes=8000) as board:
        with pytest.raises(FieldError) as ei:
            provision(Request(board.port, "bin", "city-wroom32e", "s", tmp_path / "r.jsonl"))
    assert "filesystem is full" in ei.value.problem and "node flash" in ei.value.next_step
