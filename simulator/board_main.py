"""firmware/main.py, executed at every wake as the board runs it.

What happens when a cycle fails is main.py's decision (today: print, then a 600 s deep
sleep), so the simulator runs that file rather than a copy of its logic. Its imports are
bound to the node: ``machine``, ``esp32``, ``bluetooth`` and ``time`` to the node's HAL,
``us_hal_esp32.HAL()`` to the node's HAL object, ``us_node`` to the firmware under test.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from pathlib import Path
from types import CodeType, ModuleType
from typing import TYPE_CHECKING, Any, Final

from simulator.firmware_loader import FIRMWARE_LIB

if TYPE_CHECKING:
    from simulator.node import SimNode

MAIN_PY: Final = FIRMWARE_LIB.parent / "main.py"
_HAL_MODULES: Final = ("machine", "esp32", "bluetooth", "time")


class _HalModule:
    """``us_hal_esp32`` as main.py sees it: HAL() is the running node's HAL."""

    def __init__(self, main: BoardMain) -> None:
        self._main = main

    def HAL(self) -> Any:
        return self._main.current().hal


class _NodeModule:
    """``us_node`` as main.py sees it: the firmware's run_cycle, with its escapes counted."""

    def __init__(self, main: BoardMain) -> None:
        self._main = main

    def run_cycle(self, hal: Any) -> Any:
        try:
            return self._main.firmware.run_cycle(hal)
        except Exception as exc:  # main.py decides what follows; the summary counts it
            self._main.current().errors[f"{type(exc).__name__}: {exc}"[:120]] += 1
            raise


class BoardMain:
    """One compiled main.py for a simulation; ``run(node)`` is one boot of one node."""

    def __init__(self, firmware: ModuleType, path: Path = MAIN_PY) -> None:
        self.firmware = firmware
        self.code: CodeType = compile(path.read_text(), str(path), "exec")
        self._node: SimNode | None = None
        shims: dict[str, Any] = {"us_hal_esp32": _HalModule(self), "us_node": _NodeModule(self)}
        real_import = builtins.__import__

        def board_import(name: str, globals: Mapping[str, object] | None = None,
                         locals: Mapping[str, object] | None = None,
                         fromlist: tuple[str, ...] | list[str] = (), level: int = 0) -> Any:
            if name in _HAL_MODULES:
                return getattr(self.current().hal, name)
            shim = shims.get(name)
            if shim is not None:
                return shim
            return real_import(name, globals, locals, fromlist, level)

        self._builtins: dict[str, Any] = dict(vars(builtins))
        self._builtins["__import__"] = board_import

    def current(self) -> SimNode:
        assert self._node is not None, "main.py runs only inside BoardMain.run"
        return self._node

    def run(self, node: SimNode) -> None:
        """Run main.py for ``node``; it ends by raising the HAL's DeepSleep (or anything else)."""
        self._node = node
        try:
            exec(self.code, {"__builtins__": self._builtins, "__name__": "__main__"})
        finally:
            self._node = None
