"""One node's BLE advertising, as the air and the battery see it.

The firmware starts an advertising set (``gap_advertise``) and stops it (``active(False)``,
``gap_advertise(None)``, or the end of its cycle). Contract: ``start`` registers the frame on
the ground truth at once; the set's events are drawn only when it stops, one per interval
(at least 20 ms) plus advDelay (0-10 ms: the Bluetooth Core spec's advertising events), each
sending the PDU on the three primary channels. ``stop`` charges them to the node's meter as
``ble_tx``, counts them as the frame's transmissions and hands them to the air model;
stopping a stopped set does nothing. The delays come from the node's air stream alone, so
what else a node draws never moves its adverts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from simulator.node import SimNode

# Air time of one legacy ADV_NONCONN_IND PDU at 1 Mb/s: preamble 1 + access address 4 +
# header 2 + AdvA 6 + data + CRC 3 bytes. Each advertising event sends it on 37, 38, 39.
RADIO_RAMP_US: Final = 150.0


def pdu_airtime_s(adv_len: int) -> float:
    return (1 + 4 + 2 + 6 + adv_len + 3) * 8e-6


def address_bytes(node_id: int) -> bytes:
    """The node's BLE address (top bits 11: a static random address), from its id."""
    return bytes((0xC0 | 0x10, 0x55)) + node_id.to_bytes(4, "big")


class Advertiser:
    """The node's one advertising set: (t_start, interval_us, data, frame index) or None."""

    __slots__ = ("_node", "current")

    def __init__(self, node: SimNode) -> None:
        self._node = node
        self.current: tuple[float, int, bytes, int] | None = None

    def power_on(self) -> None:
        """``active(True)``: the controller's start-up, at CPU current."""
        n = self._node
        n.advance(n.profile.ble_init_ms / 1000.0, "cpu")

    def start(self, interval_us: int, data: bytes) -> None:
        self.stop()
        n = self._node
        frame_idx = n.sim.ledger.register_ble_frame(n, n.t, data)
        self.current = (n.t, interval_us, data, frame_idx)

    def stop(self) -> None:
        if self.current is None:
            return
        n = self._node
        t0, interval_us, data, frame_idx = self.current
        self.current = None
        interval = max(interval_us, 20_000) / 1e6
        t = t0
        air = pdu_airtime_s(len(data))
        per_event_uc = n.profile.ble_tx_ua * 3 * (air + RADIO_RAMP_US * 1e-6)
        times: list[float] = []
        rng = n.rng_air
        while t < n.t:
            times.append(t)
            t += interval + rng.uniform(0.0, 0.010)  # advDelay: 0-10 ms per event (Core spec)
        n.meter.add("ble_tx", per_event_uc * len(times))
        if frame_idx >= 0 and times:
            n.sim.frames[frame_idx].adverts += len(times)  # the truth's "transmissions"
            n.sim.air.add_events(n, frame_idx, times, air)
