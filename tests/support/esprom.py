"""An ESP32's ROM serial loader behind a pty, for the real esptool as the client.

It speaks the loader's SLIP-framed protocol (esptool docs, "Serial Protocol": requests
``00 op len(2) checksum(4) data``, responses ``01 op len(2) value(4) data status``) for what
``urbansense node flash`` uses without the stub: SYNC, READ_REG (chip detection by the magic
word at 0x40001000, eFuse words for the MAC and chip revision, the UART divider for the
crystal), WRITE_REG, SPI_SET_PARAMS, SPI_ATTACH, FLASH_BEGIN / FLASH_DATA / FLASH_END (the
ROM erases what FLASH_BEGIN announces) and SPI_FLASH_MD5. Anything else is answered the way
the ESP32 ROM answers an unknown command (status 1, error 5), e.g. GET_SECURITY_INFO, which
the ESP32's ROM does not have: that is how esptool tells an ESP32 from a C3 or S3.

With the stub (the default of ``urbansense node flash``): MEM_BEGIN / MEM_DATA / MEM_END load
esptool's stub to RAM and run it, which is modelled by what the stub then does, not by
executing its code: it greets with "OHAI", answers with 2 status bytes instead of 4, erases
the whole chip (ERASE_FLASH), takes zlib-compressed writes (FLASH_DEFL_BEGIN / DATA / END,
erasing as it writes) and returns MD5 digests as 16 raw bytes.

``flash`` is the chip's flash (erased = 0xFF); ``commands`` counts what was asked.
"""

from __future__ import annotations

import hashlib
import os
import select
import struct
import threading
import tty
import zlib
from collections import Counter
from typing import Any

SYNC, READ_REG, WRITE_REG = 0x08, 0x0A, 0x09
FLASH_BEGIN, FLASH_DATA, FLASH_END = 0x02, 0x03, 0x04
SPI_SET_PARAMS, SPI_ATTACH, SPI_FLASH_MD5 = 0x0B, 0x0D, 0x13
MEM_BEGIN, MEM_END, MEM_DATA = 0x05, 0x06, 0x07
FLASH_DEFL_BEGIN, FLASH_DEFL_DATA, FLASH_DEFL_END = 0x10, 0x11, 0x12
ERASE_FLASH = 0xD0  # the stub's: the ROM has no whole-chip erase
CHECKSUM_SEED = 0xEF
ESP32_MAGIC = 0x00F01D83  # esptool targets/esp32.py CHIP_DETECT_MAGIC_VALUE
EFUSE_BASE = 0x3FF5A000
UART_CLKDIV_REG = 0x3FF40014
ERR_INVALID_CMD = 0x05
# The SPI0 controller the ROM drives the flash with (esptool targets/esp32.py): a command is
# written to USR2, started by setting USR in CMD; its answer is read from W0.
SPI_REG_BASE = 0x3FF42000
SPI_CMD_REG, SPI_USR2_REG, SPI_W0_REG = SPI_REG_BASE, SPI_REG_BASE + 0x24, SPI_REG_BASE + 0x80
SPI_CMD_USR = 1 << 18
SFDP_SIGNATURE = 0x50444653  # "SFDP"
FLASH_ID = 0x1640EF  # Winbond (EF), type 40, size code 16 = 4 MB; W0 holds it byte-reversed


def slip(data: bytes) -> bytes:
    return b"\xc0" + data.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc") + b"\xc0"


class FakeEsp32Rom:
    def __init__(self, flash_size: int = 4 * 1024 * 1024, mac: bytes = bytes.fromhex("246f28a1b2c3"),
                 magic: int = ESP32_MAGIC, fail_data_after: int | None = None) -> None:
        self.flash = bytearray(b"\xff" * flash_size)
        self.fail_data_after = fail_data_after  # FLASH_DATA blocks taken before the flash fails
        self.mac = mac
        self.magic = magic
        self.commands: Counter[int] = Counter()
        self.regs: dict[int, int] = {
            0x40001000: magic,
            # BLOCK0 words 1 and 2 hold the MAC (esptool reads word 2 then 1, big-endian, and
            # drops the two CRC bytes in front).
            EFUSE_BASE + 4: int.from_bytes(mac[2:6], "big"),
            EFUSE_BASE + 8: int.from_bytes(b"\x00\x00" + mac[0:2], "big"),
            # The ROM's UART divider at 115200 Bd from a 40 MHz crystal.
            UART_CLKDIV_REG: 40_000_000 // 115200,
        }
        self._write_at = 0
        self.stub = False  # True once a program was loaded to RAM and run (esptool's stub)
        self.ram_bytes = 0  # what MEM_DATA loaded
        self._inflate: Any = None
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> FakeEsp32Rom:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the wire ------------------------------------------------------------------------

    def _run(self) -> None:
        buf = bytearray()
        in_frame = False
        esc = False
        while not self._stop.is_set():
            ready, _, _ = select.select([self._master], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(self._master, 4096)
            except OSError:
                return
            for b in data:
                if b == 0xC0:
                    if in_frame and buf:
                        self._packet(bytes(buf))
                        buf.clear()
                        in_frame = False
                    else:
                        in_frame = True
                        buf.clear()
                elif not in_frame:
                    continue
                elif esc:
                    buf.append(0xC0 if b == 0xDC else 0xDB)
                    esc = False
                elif b == 0xDB:
                    esc = True
                else:
                    buf.append(b)

    def _reply(self, op: int, value: int = 0, data: bytes = b"", error: int = 0) -> None:
        # The ESP32 ROM sends 4 status bytes, the stub 2 (esptool loader.check_command).
        body = data + bytes((1 if error else 0, error) + ((0, 0) if not self.stub else ()))
        pkt = struct.pack("<BBHI", 1, op, len(body), value) + body
        try:
            os.write(self._master, slip(pkt))
        except OSError:
            pass

    def _packet(self, pkt: bytes) -> None:
        if len(pkt) < 8 or pkt[0] != 0:
            return
        _, op, size, checksum = struct.unpack("<BBHI", pkt[:8])
        data = pkt[8:8 + size]
        self.commands[op] += 1
        if op == SYNC:
            # The ROM answers a SYNC eight times with a non-zero value (the stub with 0, which
            # is how esptool's loader.sync tells them apart).
            for _ in range(8):
                self._reply(op, 0x20120707)
        elif op == READ_REG:
            (addr,) = struct.unpack("<I", data[:4])
            self._reply(op, self.regs.get(addr, 0))
        elif op in (WRITE_REG, SPI_SET_PARAMS, SPI_ATTACH):
            if op == WRITE_REG:
                addr, value = struct.unpack("<II", data[:8])
                self.regs[addr] = value
                if addr == SPI_CMD_REG and value & SPI_CMD_USR:
                    self._spi_command(self.regs.get(SPI_USR2_REG, 0) & 0xFF)
            self._reply(op)
        elif op == FLASH_BEGIN:
            erase_size, _blocks, _block_size, offset = struct.unpack("<IIII", data[:16])
            if offset + erase_size > len(self.flash):
                self._reply(op, error=0x06)
                return
            self.flash[offset:offset + erase_size] = b"\xff" * erase_size
            self._write_at = offset
            self._block_size = _block_size
        elif op == FLASH_DATA:
            length, seq = struct.unpack("<II", data[:8])
            payload = data[16:16 + length]
            if self._checksum(payload) != checksum:
                self._reply(op, error=0x07)  # bad data checksum
                return
            if self.fail_data_after is not None and self.commands[op] > self.fail_data_after:
                self._reply(op, error=0x08)  # the ROM's "failed to act on received message"
                return
            at = self._write_at + seq * self._block_size
            self.flash[at:at + len(payload)] = payload
        elif op == FLASH_END:
            pass
        elif op == SPI_FLASH_MD5:
            addr, length = struct.unpack("<II", data[:8])
            md5 = hashlib.md5(self.flash[addr:addr + length])
            # The ROM answers 32 hex characters, the stub the 16 raw bytes.
            self._reply(op, data=md5.digest() if self.stub else md5.hexdigest().encode())
            return
        elif op in (MEM_BEGIN, MEM_DATA):
            self.ram_bytes += len(data) - 16 if op == MEM_DATA else 0
        elif op == MEM_END:
            self._reply(op)
            # The loaded program runs: esptool's stub greets with "OHAI" and then speaks the
            # stub protocol (2 status bytes, whole-chip erase, compressed writes, raw MD5).
            self.stub = True
            os.write(self._master, slip(b"OHAI"))
            return
        elif self.stub and op == ERASE_FLASH:
            self.flash[:] = b"\xff" * len(self.flash)
        elif self.stub and op == FLASH_DEFL_BEGIN:
            size, _blocks, _block, offset = struct.unpack("<IIII", data[:16])
            if offset + size > len(self.flash):
                self._reply(op, error=0x06)
                return
            self._write_at, self._inflate = offset, zlib.decompressobj()
        elif self.stub and op == FLASH_DEFL_DATA:
            length, _seq = struct.unpack("<II", data[:8])
            payload = data[16:16 + length]
            if self._checksum(payload) != checksum:
                self._reply(op, error=0x07)
                return
            out = self._inflate.decompress(payload)
            self.flash[self._write_at:self._write_at + len(out)] = out  # the stub erases as it writes
            self._write_at += len(out)
        elif self.stub and op == FLASH_DEFL_END:
            pass
        else:
            self._reply(op, error=ERR_INVALID_CMD)
            return
        if op in (FLASH_BEGIN, FLASH_DATA, FLASH_END, MEM_BEGIN, MEM_DATA, ERASE_FLASH,
                  FLASH_DEFL_BEGIN, FLASH_DEFL_DATA, FLASH_DEFL_END):
            self._reply(op)

    def _spi_command(self, command: int) -> None:
        """The flash answers at once: SFDP read, JEDEC id; other commands read 0."""
        self.regs[SPI_W0_REG] = {0x5A: SFDP_SIGNATURE, 0x9F: FLASH_ID}.get(command, 0)
        self.regs[SPI_CMD_REG] = 0

    @staticmethod
    def _checksum(data: bytes) -> int:
        c = CHECKSUM_SEED
        for b in data:
            c ^= b
        return c
