"""BLE on the air: path loss, shadowing, fading, collisions, several gateways.

Every advertising event of every node is kept until no later event can overlap it, then
"settled": for each gateway, an event is received when it is above the gateway's
sensitivity, the gateway is in range at that time, and no other event overlapping it in
time arrives within the capture margin. Each event sends the same PDU on channels 37, 38
and 39 in turn and a scanner listens on one channel at a time, so two events collide at a
gateway exactly when their PDUs on its channel overlap, i.e. when they start less than one
PDU air time apart.
"""

from __future__ import annotations

import array
import math
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from urbansense.compat import DATACLASS_SLOTS
from urbansense.wire.advert import encode_advert


@dataclass(**DATACLASS_SLOTS)
class Gateway:
    gw_id: str
    x: float
    y: float
    sim_socket: str | None = None
    out_of_range: list[tuple[float, float]] = field(default_factory=list)


@dataclass(**DATACLASS_SLOTS)
class RadioParams:
    tx_dbm: float = 0.0
    pl_1m_db: float = 40.0  # free space at 2.4 GHz, 1 m
    exponent: float = 2.7  # street level, some obstruction
    shadowing_db: float = 6.0  # per node-gateway link, fixed
    fading_db: float = 2.0  # per packet
    sensitivity_dbm: float = -95.0
    capture_db: float = 6.0  # a packet survives an interferer this much weaker
    # "sequential": every event on 37, 38, 39 in turn (the BLE spec; a scanner hears one).
    # "random": each packet on one random channel (the model behind FIELD-FACTS' formula).
    channel_model: str = "sequential"


@dataclass(**DATACLASS_SLOTS)
class AirStats:
    events: int = 0
    received: dict[str, int] = field(default_factory=dict)
    collided: dict[str, int] = field(default_factory=dict)
    below_sensitivity: dict[str, int] = field(default_factory=dict)
    out_of_range: dict[str, int] = field(default_factory=dict)
    datagrams: int = 0
    datagram_errors: int = 0


_TWOPI = 2.0 * math.pi
FloatArr = npt.NDArray[np.float64]
IntArr = npt.NDArray[np.int64]
Deliver = Callable[[int, int, float, float], None]  # (frame, gateway index, t, rssi)


class AirModel:
    def __init__(self, gateways: list[Gateway], radio: RadioParams) -> None:
        self.gws = gateways
        self.radio = radio
        self.stats = AirStats()
        for g in gateways:
            self.stats.received[g.gw_id] = 0
            self.stats.collided[g.gw_id] = 0
            self.stats.below_sensitivity[g.gw_id] = 0
            self.stats.out_of_range[g.gw_id] = 0
        # pending events, parallel lists
        self._t: list[float] = []
        self._air: list[float] = []
        self._frame: list[int] = []
        self._chan: list[int] = []
        self._rssi: list[list[float]] = [[] for _ in gateways]
        # tail of the last settled batch (context for overlaps across the cut)
        self._tail_t: FloatArr = np.zeros(0)
        self._tail_air: FloatArr = np.zeros(0)
        self._tail_chan: IntArr = np.zeros(0, dtype=np.int64)
        self._tail_rssi: FloatArr = np.zeros((len(gateways), 0))
        self.max_air = 0.0005
        self._socks: dict[int, socket.socket] = {}

    def link_means(self, pos: tuple[float, float], rng: Any) -> list[float]:
        r = self.radio
        out = []
        for g in self.gws:
            d = max(1.0, math.hypot(pos[0] - g.x, pos[1] - g.y))
            out.append(r.tx_dbm - r.pl_1m_db - 10 * r.exponent * math.log10(d) + rng.gauss(0, r.shadowing_db))
        return out

    def add_events(self, node: Any, frame_idx: int, times: list[float], airtime: float) -> None:
        """Events of one frame's burst from one node (node.link_db: mean RSSI per gateway)."""
        self._t.extend(times)
        self._air.extend([airtime] * len(times))
        self._frame.extend([frame_idx] * len(times))
        if self.radio.channel_model == "random":
            self._chan.extend([node.rng_air.randrange(3) for _ in times])
        else:
            self._chan.extend([-1] * len(times))
        # mean + rng.gauss(0, fd) per event and gateway, bit for bit (CPython's Random.gauss:
        # Box-Muller pairs, the spare kept in gauss_next), without a call per draw.
        rng = node.rng_air
        random = rng.random
        fd = self.radio.fading_db
        spare = rng.gauss_next
        sqrt, log, cos, sin = math.sqrt, math.log, math.cos, math.sin
        for gi, mean in enumerate(node.link_db):
            out = []
            for _ in times:
                if spare is None:
                    x2pi = random() * _TWOPI
                    g2rad = sqrt(-2.0 * log(1.0 - random()))
                    z = cos(x2pi) * g2rad
                    spare = sin(x2pi) * g2rad
                else:
                    z = spare
                    spare = None
                out.append(mean + (0 + z * fd))
            self._rssi[gi].extend(out)
        rng.gauss_next = spare
        if airtime > self.max_air:
            self.max_air = airtime

    def add_arrays(self, t: FloatArr, air: FloatArr, frame: IntArr, rssi: FloatArr,
                   chan: IntArr | None = None) -> None:
        """Bulk events (from shard processes, or tests)."""
        self._t.extend(t.tolist())
        self._chan.extend([-1] * len(t) if chan is None else chan.tolist())
        self._air.extend(air.tolist())
        self._frame.extend(frame.tolist())
        for gi in range(len(self.gws)):
            self._rssi[gi].extend(rssi[gi].tolist())
        if len(air):
            self.max_air = max(self.max_air, float(air.max()))

    def export_pending(self) -> tuple[FloatArr, FloatArr, IntArr, FloatArr]:
        t = np.asarray(self._t, dtype=np.float64)
        self._chan_arr = np.asarray(self._chan, dtype=np.int64)
        air = np.asarray(self._air, dtype=np.float64)
        frame = np.asarray(self._frame, dtype=np.int64)
        rssi = np.asarray(self._rssi, dtype=np.float64).reshape(len(self.gws), len(self._t))
        return t, air, frame, rssi

    def export_packed(self) -> list[tuple[bytes, str, tuple[int, ...]]]:
        """The pending events as (bytes, numpy dtype, shape) of t, air, frame, rssi, channel:
        what a shard sends its parent (array.array packs a list fast on PyPy too, where
        numpy's asarray of a long list is slow)."""
        n = len(self._t)
        rssi = array.array("d")
        for col in self._rssi:
            rssi.extend(col)
        return [(array.array("d", self._t).tobytes(), "=f8", (n,)),
                (array.array("d", self._air).tobytes(), "=f8", (n,)),
                (array.array("q", self._frame).tobytes(), "=i8", (n,)),
                (rssi.tobytes(), "=f8", (len(self._rssi), n)),
                (array.array("q", self._chan).tobytes(), "=i8", (n,))]

    def pending(self) -> int:
        return len(self._t)

    def settle(self, cut: float, deliver: Deliver) -> None:
        """Decide every pending event that starts before ``cut`` (none later may overlap it)."""
        if not self._t:
            return
        t, air, frame, rssi = self.export_pending()
        chan = self._chan_arr
        order = np.lexsort((frame, t))
        t, air, frame, rssi, chan = t[order], air[order], frame[order], rssi[:, order], chan[order]
        n_batch = int(np.searchsorted(t, cut, side="left"))
        if n_batch == 0:
            return
        # keep the rest pending
        rest = slice(n_batch, None)
        self._t = t[rest].tolist()
        self._air = air[rest].tolist()
        self._frame = frame[rest].tolist()
        self._chan = chan[rest].tolist()
        self._rssi = [rssi[gi, rest].tolist() for gi in range(len(self.gws))]
        # context: tail before, and events after the cut that may overlap the batch
        n_after = int(np.searchsorted(t, cut + self.max_air, side="left"))
        n_tail = len(self._tail_t)
        ct = np.concatenate([self._tail_t, t[:n_after]])
        cair = np.concatenate([self._tail_air, air[:n_after]])
        cchan = np.concatenate([self._tail_chan, chan[:n_after]])
        crssi = np.concatenate([self._tail_rssi, rssi[:, :n_after]], axis=1)
        lo, hi = n_tail, n_tail + n_batch
        self.stats.events += n_batch
        self._decide(ct, cair, cchan, crssi, lo, hi, t[:n_batch], frame, deliver)
        # new tail: batch events within max_air of the cut
        keep = t[:n_batch] >= cut - self.max_air
        self._tail_t = t[:n_batch][keep]
        self._tail_air = air[:n_batch][keep]
        self._tail_chan = chan[:n_batch][keep]
        self._tail_rssi = rssi[:, :n_batch][:, keep]

    def settle_all(self, t: FloatArr, air: FloatArr, frame: IntArr, rssi: FloatArr, chan: IntArr,
                   deliver: Deliver | IntArr) -> None:
        """Decide a whole run's events at once (run_parallel's merged shards), without the
        round trip through the pending lists; nothing may be pending. ``deliver`` may be an
        int64 array of per-frame "heard by" bitmasks, OR-ed in place (no call per event)."""
        assert not self._t and not len(self._tail_t), "settle_all on an air model with pending events"
        if not len(t):
            return
        order = np.lexsort((frame, t))
        t, air, frame, rssi, chan = t[order], air[order], frame[order], rssi[:, order], chan[order]
        self.max_air = max(self.max_air, float(air.max()))
        self.stats.events += len(t)
        self._decide(t, air, chan, rssi, 0, len(t), t, frame, deliver)

    def _decide(self, ct: FloatArr, cair: FloatArr, cchan: IntArr, crssi: FloatArr, lo: int, hi: int,
                bt: FloatArr, frame: IntArr, deliver: Deliver | IntArr) -> None:
        """Events [lo, hi) of the time-sorted context (ct, ...): collided, heard or not, per gateway."""
        r = self.radio
        n_batch = hi - lo
        # Pairs (i, i + k) that overlap in time and share a channel, whatever the gateway:
        # sorted by start, no pair at distance k overlapping means none further apart does.
        pi: list[Any] = []
        pj: list[Any] = []
        k = 1
        while k < len(ct):
            overlap = (ct[k:] - ct[:-k]) < cair[:-k]
            if not overlap.any():
                break
            ca, cb = cchan[:-k], cchan[k:]
            overlap &= (ca < 0) | (cb < 0) | (ca == cb)
            i = np.flatnonzero(overlap)
            pi.append(i)
            pj.append(i + k)
            k += 1
        pa = np.concatenate(pi) if pi else np.zeros(0, dtype=np.int64)
        pb = np.concatenate(pj) if pj else np.zeros(0, dtype=np.int64)
        for gi, g in enumerate(self.gws):
            rs = crssi[gi]
            collided = np.zeros(len(ct), dtype=bool)
            if len(pa):
                a = rs[pa]
                b = rs[pb]
                # the later packet b ruins a unless a is capture_db stronger, and vice versa
                collided[pa[b > a - r.capture_db]] = True
                collided[pb[a > b - r.capture_db]] = True
            own = rs[lo:hi]
            audible = own >= r.sensitivity_dbm
            online = np.ones(n_batch, dtype=bool)
            for a0, a1 in g.out_of_range:
                online &= ~((bt >= a0) & (bt < a1))
            coll = collided[lo:hi]
            ok = audible & online & ~coll
            st = self.stats
            st.below_sensitivity[g.gw_id] += int((~audible).sum())
            st.out_of_range[g.gw_id] += int((audible & ~online).sum())
            st.collided[g.gw_id] += int((audible & online & coll).sum())
            st.received[g.gw_id] += int(ok.sum())
            if isinstance(deliver, np.ndarray):
                np.bitwise_or.at(deliver, frame[:n_batch][ok], np.int64(1) << gi)
                continue
            fr = frame[:n_batch][ok].tolist()
            ts = bt[ok].tolist()
            rv = own[ok].tolist()
            for n in range(len(fr)):
                deliver(fr[n], gi, ts[n], rv[n])

    # ------------------------------------------------------------------ gateway in the loop
    def send_datagram(self, gi: int, address: str, rssi: float, manufacturer_data: dict[int, bytes]) -> bool:
        """Hand one received advert to gateway ``gi``'s datagram input (docs/GATEWAY.md) ->
        whether the socket took it."""
        path = self.gws[gi].sim_socket
        if path is None:
            return False
        sock = self._socks.get(gi)
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            # A datagram queue holds few entries (net.unix.max_dgram_qlen): wait for the
            # gateway to drain it rather than drop, but never hang on a dead gateway.
            sock.settimeout(0.2)
            self._socks[gi] = sock
        try:
            sock.sendto(encode_advert(address, round(rssi), manufacturer_data), path)
        except OSError:
            self.stats.datagram_errors += 1  # gateway not listening yet, or its queue is full
            return False
        self.stats.datagrams += 1
        return True

    def close(self) -> None:
        for s in self._socks.values():
            s.close()
        self._socks.clear()


def clean_probability_formula(n_nodes: int, airtime_s: float, interval_s: float) -> float:
    """FIELD-FACTS: (1 - 2a/(3I))^(N-1), each packet on one of 3 channels at random."""
    return float((1 - 2 * airtime_s / (3 * interval_s)) ** (n_nodes - 1))


def clean_probability_one_channel(n_nodes: int, airtime_s: float, interval_s: float) -> float:
    """A scanner on one channel, every event on all three channels: (1 - 2a/I)^(N-1)."""
    return float((1 - 2 * airtime_s / interval_s) ** (n_nodes - 1))
