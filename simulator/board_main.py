"""firmware/main.py, executed at every wake as the board runs it.

What happens when a cycle fails is main.py's decision (today: print, then a 600 s deep
sleep), so the simulator runs that file rather than a copy of its logic. Its imports are
bound to the node: ``machine``, ``esp32`` and ``bluetooth`` to the node's HAL,
``us_hal_esp32.HAL()`` to the node's HAL object, ``us_node`` to the firmware under test.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import CodeType, ModuleType
from typing import TYPE_CHECKING, Any, Final

from simulator.firmware_loader import FIRMWARE_LIB

if TYPE_CHECKING:
    from simulator.node import SimNode

MAIN_PY: Final = FIRMWARE_LIB.parent / "main.py"
# Not "time": bound in sys.modules it would reach every module imported during the run;
# main.py takes time from the HAL (us_hal_esp32.HAL().time), as the firmware does.
_HAL_MODULES: Final = ("machine", "esp32", "bluetooth")


class _HalModule(ModuleType):
    """``us_hal_esp32`` as main.py sees it: HAL() is the running node's HAL."""

    def __init__(self, main: BoardMain) -> None:
        super().__init__("us_hal_esp32")
        self._main = main

    def HAL(self) -> Any:
        return self._main.current().hal


class _NodeModule(ModuleType):
    """``us_node`` as main.py sees it: the firmware's run_cycle, with its escapes counted."""

    def __init__(self, main: BoardMain) -> None:
        super().__init__("us_node")
        self._main = main

    def run_cycle(self, hal: Any) -> Any:
        try:
            return self._main.firmware.run_cycle(hal)
        except Exception as exc:  # main.py decides what follows; the summary counts it
            self._main.current().errors[f"{type(exc).__name__}: {exc}"[:120]] += 1
            raise


class _HalProxy(ModuleType):
    """``machine``, ``esp32`` or ``bluetooth`` as main.py imports it: the running node's.

    A module (an import finds a module in sys.modules fastest, on PyPy by 100x) that
    forwards every attribute (PEP 562) to the node's HAL object of that name.
    """

    def __init__(self, main: BoardMain, name: str) -> None:
        super().__init__(name)
        self.__dict__["__getattr__"] = lambda attr: getattr(getattr(main.current().hal, name), attr)


class BoardMain:
    """One compiled main.py for a simulation; ``run(node)`` is one boot of one node.

    main.py's imports are bound through ``sys.modules`` (CPython and PyPy both look there
    first; PyPy ignores an ``__import__`` in a custom builtins) and taken out after the
    boot, or, inside ``batch()`` (a simulation's run), when the batch ends: taking a key
    out of sys.modules at every boot costs PyPy its import caches (a run 6x slower).
    """

    def __init__(self, firmware: ModuleType, path: Path = MAIN_PY) -> None:
        self.firmware = firmware
        self.code: CodeType = compile(path.read_text(), str(path), "exec")
        self._node: SimNode | None = None
        self._hal_shim = _HalModule(self)
        self._node_shim = _NodeModule(self)
        self._modules: dict[str, ModuleType] = {n: _HalProxy(self, n) for n in _HAL_MODULES}
        self._modules["us_hal_esp32"] = self._hal_shim
        self._batch = 0  # inside batch(): the HAL modules stay bound from boot to boot

    def current(self) -> SimNode:
        assert self._node is not None, "main.py runs only inside BoardMain.run"
        return self._node

    def run(self, node: SimNode) -> None:
        """Run main.py for ``node``; it ends by raising the HAL's DeepSleep (or anything else)."""
        mods = sys.modules
        if mods.get("machine") is not self._modules["machine"]:
            mods.update(self._modules)
        real = mods.get("us_node")
        mods["us_node"] = self._node_shim
        self._node = node
        try:
            exec(self.code, {"__name__": "__main__"})
        finally:
            self._node = None
            if real is not None:
                mods["us_node"] = real
            else:  # never leave the firmware under test (a test's stand-in) as us_node
                del mods["us_node"]
            if not self._batch:
                self.unbind()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Boots inside keep main.py's modules bound; they leave sys.modules at the end."""
        self._batch += 1
        try:
            yield
        finally:
            self._batch -= 1
            if not self._batch:
                self.unbind()

    def unbind(self) -> None:
        """Take the simulated HAL modules out of sys.modules."""
        mods = sys.modules
        for n, m in self._modules.items():
            if mods.get(n) is m:
                del mods[n]
