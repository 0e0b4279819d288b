"""A virtual board behind a pty: the real mpremote (and ``urbansense node``) talk to the
MicroPython WebAssembly port as to an ESP32's USB serial REPL (tools/vboard.mjs says what the
bridge adds to the port).

    with VirtualBoard(tmp_path / "flash") as board:
        t = SerialTransport(board.port)   # the pty's slave end, opened with pyserial

The pty's slave end stays open here for the board's life, so the master never reads EIO
between two openers (a technician's successive commands). ``pull_cable()`` closes the pty
under the client (its next read or write fails, as with a USB cable pulled mid-copy);
``plug_in()`` gives the same board (the same flash directory) a new pty, as a replugged
adapter may get a new name. ``flash_dir`` holds the board's files as the VM wrote them.
``rom_dir`` (tests/support/vboard_rom.py makes one) holds what the chip has outside its
filesystem: simulated parts behind ``machine``/``esp32``, frozen firmware modules, NVS.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import threading
import tty
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parents[2]
VBOARD = ROOT / "tools" / "vboard.mjs"


class VirtualBoard:
    def __init__(self, flash_dir: Path, flash_bytes: int = 0, rom_dir: Path | None = None) -> None:
        self.flash_dir = Path(flash_dir)
        self.rom_dir = rom_dir
        self.flash_bytes = flash_bytes  # 0: no limit; else writes past it fail with ENOSPC
        self.flash_dir.mkdir(parents=True, exist_ok=True)
        self.port = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._master = -1
        self._slave = -1
        self._threads: list[threading.Thread] = []
        self._closing = threading.Event()

    def __enter__(self) -> VirtualBoard:
        self.plug_in()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def plug_in(self) -> None:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not installed; run `make setup`")
        self._closing.clear()
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        cmd = [node, str(VBOARD), "--fs", str(self.flash_dir)]
        if self.flash_bytes:
            cmd += ["--flash-bytes", str(self.flash_bytes)]
        if self.rom_dir is not None:
            cmd += ["--rom", str(self.rom_dir)]
        self._proc = subprocess.Popen(cmd,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)
        self._threads = [threading.Thread(target=self._to_board, daemon=True),
                         threading.Thread(target=self._from_board, daemon=True)]
        for t in self._threads:
            t.start()

    def _to_board(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        while not self._closing.is_set():
            try:
                ready, _, _ = select.select([self._master], [], [], 0.1)
                if not ready:
                    continue
                data = os.read(self._master, 4096)
            except OSError:
                return
            if not data:
                return
            try:
                proc.stdin.write(data)
                proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                return

    def _from_board(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        while True:
            data = proc.stdout.read1(4096)
            if not data:
                return
            try:
                os.write(self._master, data)
            except OSError:
                return

    def pull_cable(self) -> None:
        """The USB cable is pulled: the port vanishes and the board loses power (what the
        VM had not written back to ``flash_dir`` is lost)."""
        self._stop(kill=True)

    def close(self) -> None:
        """Unplug cleanly: the board writes its files back first."""
        self._stop(kill=False)

    def _stop(self, kill: bool) -> None:
        if self._proc is None:
            return
        self._closing.set()
        proc = self._proc
        self._proc = None
        if kill:
            proc.kill()
        else:
            assert proc.stdin is not None
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass
        self._master = self._slave = -1
        for t in self._threads:
            t.join(timeout=5)
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                try:
                    f.close()
                except BrokenPipeError:
                    pass
