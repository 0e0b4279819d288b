"""Import the real firmware (firmware/lib) on CPython or PyPy, with the port's C modules.

The one way any in-process code (simulator, tests, bench, field kit) imports a firmware
module: ``firmware_module("us_proto")``. Importing one behind its back (a ``sys.path`` edit
and a plain ``import``) would bind whichever AES backend came first, so the loader refuses to
run after that instead of reloading: which backend a test exercises must not depend on which
test ran before it in the same process.

``cryptolib`` on an ESP32 is backed by the chip's AES engine; here the same
``aes(key, 1).encrypt(block)`` is backed by the ``cryptography`` package. It is installed
in ``sys.modules`` before the firmware imports, so us_crypto takes its fast path as on a board.

``json`` and ``binascii`` are C modules of the MicroPython port too; the firmware modules get
their MicroPython API (json.dumps(obj, separators=None) with no circular-reference check,
binascii.crc32 and friends) in place of the interpreter's, which also spares PyPy its
pure-Python encoder checks and byte-wise CRC (a district runs ~10 % faster there). One
difference is kept: non-ASCII text is \\u-escaped (MicroPython writes UTF-8); the firmware's
state and config are ASCII.
"""

from __future__ import annotations

import binascii
import importlib
import json
import sys
import zlib
from pathlib import Path
from types import ModuleType
from typing import Any, Final

from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

FIRMWARE_LIB: Final = Path(__file__).resolve().parents[1] / "firmware" / "lib"
MODE_ECB: Final = 1
_CACHE: dict[bytes, tuple[CipherContext, dict[bytes, bytes]]] = {}
_CACHE_MAX: Final = 200_000
_MEMO_BLOCKS: Final = 4


class aes:
    """cryptolib.aes(key, 1): ECB only, the one mode the firmware uses.

    Like the engine, a pure function of key and block: the first few blocks each key
    encrypts are remembered (a node derives its keys from the same two blocks at every
    wake; its counter blocks never repeat and are not kept).
    """

    __slots__ = ("_ctx", "_memo")

    def __init__(self, key: bytes, mode: int, iv: bytes | None = None) -> None:
        if mode != MODE_ECB:
            raise ValueError("simulator cryptolib: only ECB (mode 1)")
        k = bytes(key)
        entry = _CACHE.get(k)
        if entry is None:
            if len(_CACHE) >= _CACHE_MAX:
                _CACHE.clear()
            entry = (Cipher(algorithms.AES(k), modes.ECB()).encryptor(), {})
            _CACHE[k] = entry
        self._ctx, self._memo = entry

    def encrypt(self, data: bytes, out: bytearray | None = None) -> bytes:
        block = bytes(data)
        memo = self._memo
        b = memo.get(block)
        if b is None:
            b = self._ctx.update(block)
            if len(memo) < _MEMO_BLOCKS:
                memo[block] = b
        if out is not None:
            out[: len(b)] = b
        return b

    def decrypt(self, data: bytes, out: bytearray | None = None) -> bytes:
        raise ValueError("simulator cryptolib: decrypt is not used by the firmware")


class _PortJson(ModuleType):
    """MicroPython's ``json``: loads, load, dumps and dump with ``separators`` only."""

    def __init__(self) -> None:
        super().__init__("json")
        self._encoders: dict[Any, json.JSONEncoder] = {}

    def dumps(self, obj: Any, separators: tuple[str, str] | None = None) -> str:
        enc = self._encoders.get(separators)
        if enc is None:
            enc = json.JSONEncoder(check_circular=False, separators=separators)
            self._encoders[separators] = enc
        return enc.encode(obj)

    def dump(self, obj: Any, stream: Any, separators: tuple[str, str] | None = None) -> None:
        stream.write(self.dumps(obj, separators))

    @staticmethod
    def loads(s: str | bytes | bytearray) -> Any:
        return json.loads(s)

    @staticmethod
    def load(stream: Any) -> Any:
        return json.loads(stream.read())


class _PortBinascii(ModuleType):
    """MicroPython's ``binascii`` (crc32 is zlib's: the same CRC, C on PyPy as well)."""

    hexlify = staticmethod(binascii.hexlify)
    unhexlify = staticmethod(binascii.unhexlify)
    a2b_base64 = staticmethod(binascii.a2b_base64)
    b2a_base64 = staticmethod(binascii.b2a_base64)
    crc32 = staticmethod(zlib.crc32)

    def __init__(self) -> None:
        super().__init__("binascii")


_PORT_MODULES: Final[dict[str, tuple[ModuleType, ModuleType]]] = {
    "json": (json, _PortJson()), "binascii": (binascii, _PortBinascii())}


def bind_port_modules(lib: Path = FIRMWARE_LIB) -> None:
    """Point every loaded firmware module's ``json``/``binascii`` at the port's modules."""
    root = str(lib)
    for mod in list(sys.modules.values()):
        if not str(getattr(mod, "__file__", "") or "").startswith(root):
            continue
        ns = vars(mod)
        for name, (stdlib, port) in _PORT_MODULES.items():
            if ns.get(name) is stdlib:
                ns[name] = port


def install_cryptolib() -> None:
    mod = sys.modules.get("cryptolib")
    if mod is not None and getattr(mod, "__simulator__", False):
        return
    crypto = sys.modules.get("us_crypto")
    if crypto is not None and "cryptolib" not in vars(crypto):
        raise RuntimeError("us_crypto was imported before simulator.firmware_loader installed the "
                           "port's cryptolib: import firmware modules with firmware_module()")
    m = ModuleType("cryptolib")
    m.aes = aes  # type: ignore[attr-defined]
    m.MODE_ECB = MODE_ECB  # type: ignore[attr-defined]
    m.__simulator__ = True  # type: ignore[attr-defined]
    sys.modules["cryptolib"] = m


def firmware_module(name: str, lib: Path = FIRMWARE_LIB) -> ModuleType:
    """-> the firmware module ``name`` (e.g. "us_proto"), imported as on a board.

    Raises ImportError with a clear message if firmware/lib has no such module.
    """
    install_cryptolib()
    if str(lib) not in sys.path:
        sys.path.insert(0, str(lib))
    try:
        mod = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            raise ImportError(f"no firmware: {lib}/{name}.py not found") from None
        raise
    bind_port_modules(lib)
    return mod


def load_firmware(lib: Path = FIRMWARE_LIB) -> ModuleType:
    """-> the us_node module (raises ImportError with a clear message if absent)."""
    return firmware_module("us_node", lib)
