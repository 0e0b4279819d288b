"""The truth ledger: every frame the nodes sent, what it carried, and what became of it.

A frame is decoded by the firmware's own codec (simulator/fw_codec.py), never by the gateway's,
so a gateway decoding bug cannot agree with itself in an end-to-end comparison. A BLE burst
(the same payload advertised again) and serial retransmissions count once. The ledger records
who heard a frame on air, which gateway in the loop was handed it, and whether a serial frame
was acknowledged; ``fate`` (simulator/summary.py) turns that into the one meaning of "heard".

With a truth file open, a frame is written once its fate is known: a BLE burst once it is over
and the air settled, a serial frame once acknowledged (a retransmission may be acked hours
later), the rest when the run ends.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

from simulator.advertising import address_bytes
from simulator.fw_codec import FirmwareCodec, FrameDecodeError
from simulator.summary import FrameOutcome
from urbansense.wire.protocol import TYPE_NAMES
from urbansense.wire.quantities import QUANTITIES

if TYPE_CHECKING:
    from simulator.node import SimNode
    from simulator.sim import Simulation

_T_COMPANY_DEFAULT: Final = 0xFFFF
# A frame is written to the truth file once every advert of its burst is settled.
TRUTH_MARGIN_S: Final = 10.0


class Frame:
    """One frame a node sent (a burst of adverts, or serial retransmissions, count once)."""

    __slots__ = (
        "acked",
        "adverts",
        "company",
        "datagram_errors",
        "decode_error",
        "delivered",
        "fcnt",
        "ftype",
        "heard",
        "node",
        "payload",
        "readings",
        "rssi",
        "t",
        "transport",
        "truth",
    )

    def __init__(self, node: int, fcnt: int, ftype: int, t: float, transport: str,
                 readings: dict[int, int | bool], truth: dict[str, Any]) -> None:
        self.node = node
        self.fcnt = fcnt
        self.ftype = ftype
        self.t = t
        self.transport = transport
        self.heard = 0  # bitmask of gateway indexes that received it over the air
        # bitmask of gateways in the loop that were handed it (a datagram their socket took,
        # bytes written to their serial port): heard but not delivered = lost at the boundary
        self.delivered = 0
        self.datagram_errors = 0
        self.decode_error: str | None = None  # the firmware's codec cannot open it (still sent)
        self.adverts = 0
        self.readings = readings
        self.truth = truth
        self.acked = False
        self.company: int | None = _T_COMPANY_DEFAULT  # None: not manufacturer-specific data
        self.payload = b""
        self.rssi: dict[int, float] = {}


class TruthLedger:
    """The frames of one simulation (or one shard of it), in the order they were sent."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.frames: list[Frame] = []
        self.decode_errors: Counter[str] = Counter()
        self.codec = FirmwareCodec()
        self.truth_out: IO[str] | None = None
        self._open_frames: dict[int, int] = {}  # node index -> frame idx of the last BLE frame
        self._serial_frames: dict[tuple[int, int], int] = {}  # (node index, fcnt) -> frame idx
        self._serial_payloads: dict[tuple[int, bytes], int] = {}
        self._held: list[Frame] = []  # serial frames waiting for their ack to be written
        self._written = 0

    # ------------------------------------------------------------------ recording
    def _truth_at(self, node: SimNode, t: float) -> dict[str, Any]:
        w = node.world
        if node.kind == "parking":
            return {"occupied": w.occupied(t)}
        if node.kind == "bin":
            return {"fill_pct": round(w.fill_pct(t), 2), "distance_mm": round(w.distance_mm(t), 1)}
        return {"volume_l": round(w.volume_l(t), 3), "flow_lph": round(w.flow_lph(t), 1)}

    def _decode(self, node: SimNode, frame: bytes) -> tuple[int, int, dict[int, int | bool]] | str:
        """-> (fcnt, type, readings) by the firmware's own codec, or the reason it failed."""
        try:
            fcnt, ftype, readings = self.codec.decode(node.key, node.node_id, frame, node.last_fcnt)
        except FrameDecodeError as exc:
            self.decode_errors[exc.reason] += 1
            return exc.reason
        node.last_fcnt = fcnt
        return fcnt, ftype, readings

    def _new_frame(self, node: SimNode, t: float, transport: str, frame: bytes,
                   dec: tuple[int, int, dict[int, int | bool]] | str) -> Frame:
        if isinstance(dec, str):
            fr = Frame(node.index, -1, -1, t, transport, {}, self._truth_at(node, t))
            fr.decode_error = dec
        else:
            fcnt, ftype, readings = dec
            fr = Frame(node.index, fcnt, ftype, t, transport, readings, self._truth_at(node, t))
        fr.payload = frame
        self.frames.append(fr)
        return fr

    def register_ble_frame(self, node: SimNode, t: float, adv: bytes) -> int:
        """A gap_advertise payload -> frame index. Every advert goes on air; one the
        firmware's codec cannot open is in the truth file with its ``decode_error``."""
        last = self._open_frames.get(node.index)
        if len(adv) < 4 or adv[1] != 0xFF or adv[0] + 1 > len(adv):
            company, frame = None, bytes(adv)
            dec: tuple[int, int, dict[int, int | bool]] | str = "not_manufacturer_data"
        else:
            company, frame = adv[2] | (adv[3] << 8), bytes(adv[4 : adv[0] + 1])
            dec = ""
        if last is not None and self.frames[last].payload == frame and self.frames[last].company == company:
            return last  # the same frame advertised again
        if company is None:
            self.decode_errors["not_manufacturer_data"] += 1
        else:
            dec = self._decode(node, frame)
        fr = self._new_frame(node, t, "ble", frame, dec)
        fr.company = company
        idx = len(self.frames) - 1
        self._open_frames[node.index] = idx
        return idx

    def register_serial_frame(self, node: SimNode, t: float, frame: bytes, gw_id: str) -> int:
        """A frame the node wrote to its UART -> frame index (retransmissions count once)."""
        key = (node.index, frame)
        idx = self._serial_payloads.get(key)
        if idx is None:
            fr = self._new_frame(node, t, "serial", frame, self._decode(node, frame))
            idx = len(self.frames) - 1
            self._serial_payloads[key] = idx
            if fr.decode_error is None:
                self._serial_frames[(node.index, fr.fcnt)] = idx
        self.frames[idx].adverts += 1  # transmissions
        return idx

    def mark_serial_delivered(self, node: SimNode, frame_idx: int) -> None:
        """The frame's bytes went into the gateway's serial port."""
        self.frames[frame_idx].delivered |= 1 << self.sim.gw_index.get(node.gw_id, 0)

    def mark_acked(self, node: SimNode, fcnt: int) -> None:
        idx = self._serial_frames.get((node.index, fcnt))
        if idx is not None:
            fr = self.frames[idx]
            fr.acked = True
            fr.heard |= 1 << self.sim.gw_index.get(getattr(node, "gw_id", ""), 0)

    def deliver(self, frame_idx: int, gi: int, t: float, rssi: float) -> None:
        """The air decided gateway ``gi`` received the frame (AirModel.settle's callback)."""
        fr = self.frames[frame_idx]
        fr.heard |= 1 << gi
        if rssi > fr.rssi.get(gi, -999.0):
            fr.rssi[gi] = rssi
        sim = self.sim
        if sim.gateways[gi].sim_socket is not None:
            node = sim.nodes_by_index[fr.node]
            addr = ":".join(f"{b:02X}" for b in address_bytes(node.node_id))
            mfr = {} if fr.company is None else {fr.company: fr.payload}
            if sim.air.send_datagram(gi, addr, rssi, mfr):
                fr.delivered |= 1 << gi
            else:
                fr.datagram_errors += 1

    # ------------------------------------------------------------------ accounting
    @property
    def _in_loop(self) -> list[int]:
        """Indexes of the gateways whose bleak backend is in the loop (a socket to feed)."""
        return [i for i, g in enumerate(self.sim.gateways) if g.sim_socket is not None]

    def lost_at_boundary(self, fr: Frame) -> bool:
        """Heard on air by a gateway in the loop, yet handed to none of them."""
        if fr.transport != "ble" or fr.delivered:
            return False
        return any(fr.heard >> i & 1 for i in self._in_loop)

    def outcomes(self, boundary: bool = True) -> list[FrameOutcome]:
        """Every frame for the summary (``boundary``: judge losses at the gateway boundary;
        a shard cannot, its parent settles the air)."""
        lost = self.lost_at_boundary
        return [FrameOutcome(f.node, f.ftype, f.transport, f.heard, f.acked, f.truth, f.readings,
                             lost(f) if boundary else False) for f in self.frames]

    def wire_outcomes(self) -> list[tuple[Any, ...]]:
        """``outcomes(boundary=False)`` as FrameOutcome.wire() tuples, built directly (a
        shard's result: hundreds of thousands of frames a district day)."""
        return [(f.node, f.ftype, f.transport, f.heard, f.acked, f.truth, f.readings, False)
                for f in self.frames]

    # ------------------------------------------------------------------ truth file
    def open_truth(self, path: str | Path) -> None:
        self.truth_out = Path(path).open("w")  # noqa: SIM115 - closed by close()

    def close(self) -> None:
        if self.truth_out is not None and not self.truth_out.closed:
            self.truth_out.close()

    def frame_record(self, fr: Frame) -> dict[str, Any]:
        """One truth line. ``readings`` are what the firmware put into the frame (its own
        codec); ``heard_by`` the gateways that received it on air, ``delivered_to`` those in
        the loop that were handed it, so a loss on air and a loss at the boundary differ."""
        node = self.sim.nodes_by_index[fr.node]
        gws = self.sim.gateways
        heard = [g.gw_id for i, g in enumerate(gws) if fr.heard >> i & 1]
        heard_in_loop = [i for i in self._in_loop if fr.heard >> i & 1] if fr.transport == "ble" else []
        rec: dict[str, Any] = {
            "node_id": node.node_id,
            "node": node.name,
            "kind": node.kind,
            "fcnt": None if fr.decode_error else fr.fcnt,
            "ftype": None if fr.decode_error else TYPE_NAMES.get(fr.ftype, str(fr.ftype)),
            "readings": {QUANTITIES[k].field if k in QUANTITIES else str(k): v for k, v in sorted(fr.readings.items())},
            "t_sim": round(fr.t, 6),
            "transport": fr.transport,
            "heard_by": heard,
            "lost_on_air": fr.transport == "ble" and not heard,
            "delivered_to": [g.gw_id for i, g in enumerate(gws) if fr.delivered >> i & 1],
            "undelivered_to": [gws[i].gw_id for i in heard_in_loop if not fr.delivered >> i & 1],
            "lost_at_gateway_boundary": self.lost_at_boundary(fr),
            "transmissions": fr.adverts,
            "truth": fr.truth,
            "frame_hex": fr.payload.hex(),
        }
        if fr.decode_error is not None:
            rec["decode_error"] = fr.decode_error
        if fr.transport == "serial":
            rec["acked"] = fr.acked
        else:
            rec["rssi"] = {gws[i].gw_id: round(v, 1) for i, v in sorted(fr.rssi.items())}
            rec["datagram_errors"] = fr.datagram_errors
        return rec

    def flush_truth(self, cut: float) -> None:
        """Write the frames whose fate is known at simulated time ``cut`` (inf: all)."""
        out = self.truth_out
        if out is None:
            return
        final = math.isinf(cut)
        still: list[Frame] = []
        for fr in self._held:
            if fr.acked or final:
                out.write(json.dumps(self.frame_record(fr), sort_keys=True) + "\n")
            else:
                still.append(fr)
        self._held = still
        frames = self.frames
        while self._written < len(frames):
            fr = frames[self._written]
            if not final and fr.t >= cut - TRUTH_MARGIN_S:
                break
            if fr.transport == "serial" and not fr.acked and not final:
                self._held.append(fr)
            else:
                out.write(json.dumps(self.frame_record(fr), sort_keys=True) + "\n")
            self._written += 1
        if final:
            out.flush()
