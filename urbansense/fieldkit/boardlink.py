"""A board's MicroPython REPL over a serial port, through mpremote as a library.

mpremote's SerialTransport does the raw-REPL work; this module turns what goes wrong on a
street corner into FieldErrors that say what to do: no such port, a port another program
holds, a board that answers but not as MicroPython, a full filesystem, a cable pulled mid-copy
(a re-run resumes: ``sync`` copies only files whose SHA-256 differs and verifies each copy).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import serial
from mpremote.transport import TransportError, TransportExecError
from mpremote.transport_serial import SerialTransport

from urbansense.fieldkit._errors import FieldError

_READ_TIMEOUT_S = 5.0
Progress = Callable[[str, int, int], None]
"""(board path, bytes done, file size)"""

_LOST = ("lost the board during the copy (cable pulled, or the board reset)",
         "plug it back in and run the same command again: it resumes, copying only what is missing")


def _lost(what: str) -> FieldError:
    return FieldError(f"{_LOST[0]} while {what}", _LOST[1])


class BoardLink:
    """Open with ``connect(port)`` (a context manager)."""

    def __init__(self, transport: SerialTransport, port: str) -> None:
        self.t = transport
        self.port = port

    # -- small calls ---------------------------------------------------------------------

    def eval(self, expr: str) -> Any:
        try:
            return self.t.eval(expr)
        except (serial.SerialException, OSError, TransportError) as exc:
            if isinstance(exc, TransportExecError):
                raise FieldError(f"the board refused {expr!r}: {exc.error_output.strip()}",
                                 "run `urbansense node doctor --port PORT` to see what the board has") from None
            raise _lost("asking the board") from None

    def exec(self, code: str) -> bytes:
        try:
            out: bytes = self.t.exec(code)
            return out
        except TransportExecError:
            raise
        except (serial.SerialException, OSError, TransportError):
            raise _lost("running a command") from None

    def read_text(self, path: str) -> str | None:
        """A small file's text, or None if it is absent or unreadable."""
        try:
            data: bytes = self.t.fs_readfile(path)
        except FileNotFoundError:
            return None
        except (serial.SerialException, TransportError):
            raise _lost(f"reading {path}") from None
        except OSError:
            return None
        return data.decode("utf-8", "replace")

    # -- copying ------------------------------------------------------------------------

    def hash_of(self, path: str) -> bytes | None:
        try:
            digest: bytes = self.t.fs_hashfile(path, "sha256")
            return digest
        except FileNotFoundError:
            return None
        except (serial.SerialException, TransportError):
            raise _lost(f"checking {path}") from None
        except OSError:
            return None

    def _mkdirs(self, path: str) -> None:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            with contextlib.suppress(FileExistsError):
                try:
                    self.t.fs_mkdir("/".join(parts[:i]))
                except (serial.SerialException, TransportError):
                    raise _lost("making a directory") from None

    def sync(self, files: dict[str, bytes], progress: Progress | None = None) -> dict[str, int]:
        """Copy the files whose hash differs, verify every copy -> counts and bytes copied."""
        copied = unchanged = copied_bytes = 0
        for path, data in files.items():
            want = hashlib.sha256(data).digest()
            if self.hash_of(path) == want:
                unchanged += 1
                if progress:
                    progress(path, len(data), len(data))
                continue
            self._mkdirs(path)
            cb = (lambda done, total, p=path: progress(p, done, total)) if progress else None
            try:
                self.t.fs_writefile(path, data, progress_callback=cb)
            except OSError as exc:
                if exc.errno == 28 or "ENOSPC" in str(exc):
                    raise FieldError(f"the board's filesystem is full writing {path}",
                                     "erase the board with `urbansense node flash --port PORT` "
                                     "(it erases the flash) and provision again") from None
                if isinstance(exc, serial.SerialException):
                    raise _lost(f"copying {path}") from None
                raise FieldError(f"the board could not write {path}: {exc}",
                                 "run `urbansense node doctor --port PORT`; if the flash is damaged, "
                                 "re-flash with `urbansense node flash`") from None
            except TransportError:
                raise _lost(f"copying {path}") from None
            if self.hash_of(path) != want:
                raise FieldError(f"{path} on the board does not match what was sent (SHA-256)",
                                 "run the same command again; if it repeats, try another cable")
            copied += 1
            copied_bytes += len(data)
        return {"files_copied": copied, "files_unchanged": unchanged, "bytes_copied": copied_bytes}

    def remove_stale(self, keep: dict[str, bytes], directory: str = "lib", prefix: str = "us_") -> list[str]:
        """Remove firmware files the new set does not have (a stale lib/us_x.py would be
        imported before lib/us_x.mpy)."""
        try:
            names = [e.name for e in self.t.fs_listdir(directory)]
        except FileNotFoundError:
            return []
        except (serial.SerialException, TransportError, OSError):
            raise _lost("listing the board") from None
        gone = []
        for name in names:
            path = f"{directory}/{name}"
            if name.startswith(prefix) and path not in keep:
                try:
                    self.t.fs_rmfile(path)
                except (serial.SerialException, TransportError, OSError):
                    raise _lost(f"removing {path}") from None
                gone.append(path)
        return gone

    def soft_reset(self) -> None:
        """Soft reset inside the raw REPL: boot.py runs, main.py does not (no deep sleep)."""
        try:
            self.t.exit_raw_repl()
            self.t.enter_raw_repl(soft_reset=True)
        except (serial.SerialException, OSError, TransportError):
            raise _lost("resetting the board") from None

    def run_json(self, code: str) -> Any:
        """Run code that prints one JSON line last -> that value (TransportExecError passes)."""
        out = self.exec(code).decode("utf-8", "replace").strip().splitlines()
        return json.loads(out[-1]) if out else None


def _probe(port: str) -> None:
    """Open and close the port once, to say precisely why it cannot be used (mpremote's
    SerialTransport reports every failure as "failed to access")."""
    if not os.path.exists(port):
        raise FieldError(f"no serial port {port}",
                         "check the cable, then list ports with `ls /dev/ttyUSB* /dev/ttyACM*` "
                         "and pass the right one with --port")
    try:
        serial.Serial(port, exclusive=True).close()
    except (serial.SerialException, OSError) as exc:
        text = str(exc)
        if "exclusively lock" in text or "Errno 11" in text or "Errno 16" in text or "busy" in text.lower():
            raise FieldError(f"{port} is in use by another program",
                             "close mpremote, screen, minicom or the IDE that holds it, and run this again") from None
        if "Permission denied" in text or "Errno 13" in text:
            raise FieldError(f"no permission to open {port}",
                             "add yourself to the dialout group (`sudo usermod -aG dialout $USER`, "
                             "then log in again)") from None
        raise FieldError(f"cannot open {port}: {text}", "check the cable and the port name") from None


@contextlib.contextmanager
def connect(port: str, timeout_s: float = 10.0) -> Iterator[BoardLink]:
    _probe(port)
    try:
        # A read timeout, so a port where nothing answers fails instead of blocking for ever.
        t = SerialTransport(port, baudrate=115200, timeout=_READ_TIMEOUT_S)
    except (TransportError, serial.SerialException, OSError) as exc:
        raise FieldError(f"cannot open {port}: {exc}", "check the cable and the port name") from None
    try:
        try:
            t.enter_raw_repl(soft_reset=False, timeout_overall=timeout_s)
        except (TransportError, serial.SerialException, OSError):
            raise FieldError(f"no MicroPython REPL answers on {port}",
                             f"flash MicroPython first: `urbansense node flash --port {port}`; if it is "
                             "flashed, press the board's RESET button and run this again within a second "
                             "(a sleeping node does not answer)") from None
        yield BoardLink(t, port)
        with contextlib.suppress(serial.SerialException, OSError, TransportError):
            t.exit_raw_repl()
    finally:
        with contextlib.suppress(serial.SerialException, OSError, TransportError):
            t.close()
