"""``machine.Pin`` and ``machine.ADC`` for one simulated node: the pads.

Contract: a pin reads the level the node's world drives on it (or its own output level when
it is an output); writing an output reaches the node's parts (``SimNode.set_pin_out``); a held
pad (``hold=True``) ignores writes and keeps its level until the hold is released; passing
``hold=`` releases the hold before the new configuration and sets it again after, as the
ESP32 port does. Pin ids
outside 0-48 raise ``ValueError("invalid pin")``. ``irq`` handlers are recorded only: pulses
reach the firmware through pin wakes, not edges while awake. ``ADC.read_uv`` returns the
node's analog level in microvolts and costs 40 us; ``read_u16``/``read`` scale it to a 3.1 V
full scale whatever the attenuation (the ATTN_11DB range the boards use).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from simulator.node import SimNode


class SimPin:
    IN: Final = 1
    OUT: Final = 3
    OPEN_DRAIN: Final = 7
    PULL_UP: Final = 2
    PULL_DOWN: Final = 1
    PULL_HOLD: Final = 4
    IRQ_RISING: Final = 1
    IRQ_FALLING: Final = 2
    WAKE_LOW: Final = 4
    WAKE_HIGH: Final = 5
    DRIVE_0: Final = 0
    DRIVE_1: Final = 1
    DRIVE_2: Final = 2
    DRIVE_3: Final = 3

    __slots__ = ("_n", "_out", "handler", "id", "mode", "pull")

    def __init__(self, node: SimNode, id: int, mode: int = -1, pull: int = -1, *,
                 value: Any = None, drive: int = -1, alt: int = -1, hold: bool | None = None) -> None:
        if not isinstance(id, int) or not 0 <= id <= 48:
            raise ValueError("invalid pin")
        self._n = node
        self.id = id
        self.mode = mode
        self.pull = pull
        self.handler: Callable[[SimPin], None] | None = None
        if value is None and hold is None:
            self._out = 0
            return
        self._out = 0 if value is None else int(bool(value))
        # ESP32 port: a hold is released before the pin is reconfigured, set again after.
        held = node.held
        if hold is not None:
            held.pop(id, None)
        if value is not None and id not in held:
            node.set_pin_out(id, self._out)
        if hold:
            held[id] = node.pin_out.get(id, 0)

    def init(self, mode: int = -1, pull: int = -1, *, value: Any = None, drive: int = -1, alt: int = -1,
             hold: bool | None = None) -> None:
        if hold is not None:
            self._n.held.pop(self.id, None)
        if mode != -1:
            self.mode = mode
        if pull != -1:
            self.pull = pull
        if value is not None:
            self.value(value)
        if hold:
            self._n.held[self.id] = self._n.pin_out.get(self.id, 0)

    def value(self, x: Any = None) -> int | None:
        if x is None:
            if self.mode == self.OUT:
                return self._n.pin_out.get(self.id, 0)
            return self._n.pin_level(self.id, self.pull)
        if self.id in self._n.held:
            return None  # a held pad keeps its level until the hold is released
        self._out = int(bool(x))
        self._n.set_pin_out(self.id, self._out)
        return None

    __call__ = value

    def on(self) -> None:
        self.value(1)

    def off(self) -> None:
        self.value(0)

    def irq(self, handler: Callable[[SimPin], None] | None = None, trigger: int = 3, *,
            priority: int = 1, wake: int | None = None, hard: bool = False) -> None:
        # Recorded; the firmware counts pulses by pin wake, so edges while awake are not fed.
        self.handler = handler

    def __repr__(self) -> str:
        return f"Pin({self.id})"


class PinFactory:
    IN: Final = SimPin.IN
    OUT: Final = SimPin.OUT
    OPEN_DRAIN: Final = SimPin.OPEN_DRAIN
    PULL_UP: Final = SimPin.PULL_UP
    PULL_DOWN: Final = SimPin.PULL_DOWN
    PULL_HOLD: Final = SimPin.PULL_HOLD
    IRQ_RISING: Final = SimPin.IRQ_RISING
    IRQ_FALLING: Final = SimPin.IRQ_FALLING
    WAKE_LOW: Final = SimPin.WAKE_LOW
    WAKE_HIGH: Final = SimPin.WAKE_HIGH

    __slots__ = ("_n",)

    def __init__(self, node: SimNode) -> None:
        self._n = node

    def __call__(self, id: int, mode: int = -1, pull: int = -1, *, value: Any = None,
                 drive: int = -1, alt: int = -1, hold: bool | None = None) -> SimPin:
        if value is None and hold is None:
            return SimPin(self._n, id, mode, pull)
        return SimPin(self._n, id, mode, pull, value=value, hold=hold)  # drive, alt: no effect here


def pin_id(p: Any) -> int:
    return p.id if isinstance(p, SimPin) else int(p)


class SimADC:
    ATTN_0DB: Final = 0
    ATTN_2_5DB: Final = 1
    ATTN_6DB: Final = 2
    ATTN_11DB: Final = 3
    WIDTH_12BIT: Final = 12

    __slots__ = ("_n", "atten_", "pin")

    def __init__(self, node: SimNode, pin: Any, *, atten: int = 3) -> None:
        self._n = node
        self.pin = pin_id(pin)
        self.atten_ = atten

    def init(self, *, sample_ns: int = 0, atten: int = 3) -> None:
        self.atten_ = atten

    def atten(self, atten: int) -> None:
        self.atten_ = atten

    def width(self, bits: int) -> None:
        return None

    def read_uv(self) -> int:
        self._n.advance(40e-6)
        return self._n.adc_uv(self.pin)

    def read_u16(self) -> int:
        return min(65535, self.read_uv() * 65535 // 3_100_000)

    def read(self) -> int:
        return self.read_u16() >> 4


class ADCFactory:
    ATTN_0DB: Final = 0
    ATTN_2_5DB: Final = 1
    ATTN_6DB: Final = 2
    ATTN_11DB: Final = 3
    WIDTH_12BIT: Final = 12

    __slots__ = ("_n",)

    def __init__(self, node: SimNode) -> None:
        self._n = node

    def __call__(self, pin: Any, *, atten: int = 3) -> SimADC:
        return SimADC(self._n, pin, atten=atten)
