"""The virtual board: the real mpremote over a pty to the MicroPython WebAssembly VM."""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import pytest
from mpremote.transport import TransportError
from mpremote.transport_serial import SerialTransport

from tests.support.mpvm import missing_reason
from tests.support.vboard import VirtualBoard

pytestmark = [pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason())),
              pytest.mark.timeout(60)]


def test_mpremote_exec_fs_and_errno_names(tmp_path: Path) -> None:
    with VirtualBoard(tmp_path / "flash") as board:
        t = SerialTransport(board.port)
        try:
            t.enter_raw_repl(soft_reset=False)
            assert t.eval("6 * 7") == 42  # mpremote asked for raw paste first: the bridge said no
            with pytest.raises(FileNotFoundError):  # the port's errno 44, renamed ENOENT
                t.fs_stat("missing.py")
            t.fs_mkdir("lib")
            with pytest.raises(FileExistsError):  # errno 20 -> EEXIST
                t.fs_mkdir("lib")
            data = bytes(range(256)) * 5
            seen: list[int] = []
            t.fs_writefile("lib/blob.bin", data, progress_callback=lambda done, total: seen.append(done))
            assert seen[-1] == len(data) and len(seen) == 5  # mpremote's 256-byte chunks
            assert t.fs_hashfile("lib/blob.bin", "sha256") == hashlib.sha256(data).digest()
            t.fs_writefile("main.py", b"print('hello from main')\n")
            # A soft reset reloads the interpreter and keeps the files (and the raw REPL).
            t.exit_raw_repl()
            t.enter_raw_repl(soft_reset=True)
            assert t.eval("1") == 1
            assert t.fs_readfile("lib/blob.bin") == data
            with pytest.raises(TransportError):
                t.exec("raise ValueError('boom')")
            t.exit_raw_repl()
        finally:
            t.close()
    assert (tmp_path / "flash" / "lib" / "blob.bin").read_bytes() == data


def test_a_pulled_cable_fails_the_client_and_the_flash_keeps_what_was_written(tmp_path: Path) -> None:
    board = VirtualBoard(tmp_path / "flash")
    board.plug_in()
    t = SerialTransport(board.port)
    try:
        t.enter_raw_repl(soft_reset=False)
        t.fs_writefile("a.txt", b"first")
        t.fs_writefile("b.txt", b"second")
        board.pull_cable()
        with pytest.raises((TransportError, OSError)):
            t.fs_writefile("c.txt", b"third" * 200)
    finally:
        with contextlib.suppress(OSError):  # pyserial's close resets RTS on a vanished port
            t.close()
        board.close()
    board.plug_in()  # the same board on a new port
    t = SerialTransport(board.port)
    try:
        t.enter_raw_repl(soft_reset=False)
        names = {e.name for e in t.fs_listdir("")}
        assert "a.txt" in names and "c.txt" not in names
        t.exit_raw_repl()
    finally:
        t.close()
        board.close()
