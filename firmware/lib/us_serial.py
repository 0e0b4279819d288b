# Serial transport: COBS+CRC frames on a UART, one ack per frame, a bounded backlog of
# unacknowledged frames in RTC memory, downlink commands applied once (DCnt).
try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[misc]  # CPython stand-in for micropython.const
        return x

import us_cobs
import us_proto
import us_store

BACKLOG_MAX = const(8)
ACK_TIMEOUT_MS = const(300)
_POLL_MS = const(5)
_RX_MAX = const(128)
_MAX_THRESHOLDS = const(8)


def make_room(state, n_new, backlog_max=BACKLOG_MAX):
    """Drop the oldest backlog frames so n_new more fit, adding every frame that will be
    lost (new ones that cannot fit too) to state["dr"] *before* the new frames are built,
    so they carry it. The count is cumulative (quantity 13): any delivered frame tells the
    gateway the whole loss, though the frames that carried earlier counts were dropped."""
    bl = state.setdefault("bl", [])
    over = len(bl) + n_new - backlog_max
    if over > 0:
        state["dr"] = state.get("dr", 0) + over
        for _ in range(min(over, len(bl))):
            bl.pop(0)
    return bl


def enqueue(state, out, backlog_max=BACKLOG_MAX):
    """Append (fcnt, frame) pairs to state["bl"] (make_room has counted what cannot fit)."""
    bl = state.setdefault("bl", [])
    for fc, frame in out:
        bl.append([fc, frame])
    while len(bl) > backlog_max:
        bl.pop(0)
    return bl


def _read_packet(hal, uart, timeout_ms, rx):
    """Bytes up to the next 0x00 delimiter, or None at the deadline."""
    t = hal.time
    start = t.ticks_ms()
    while True:
        i = rx.find(b"\x00")
        if i >= 0:
            pkt = bytes(rx[:i])
            # Slice assignment: MicroPython's bytearray has no item deletion (objarray.c),
            # `del rx[:n]` raises TypeError on the board.
            rx[:i + 1] = b""
            return pkt
        if t.ticks_diff(t.ticks_ms(), start) >= timeout_ms:
            return None
        data = uart.read() if uart.any() else None
        if data:
            rx.extend(data)
            if len(rx) > _RX_MAX:  # line noise without delimiters: keep the tail
                rx[:len(rx) - _RX_MAX] = b""
        else:
            t.sleep_ms(_POLL_MS)


def _command(k, v):
    """A downlink command's value if the node accepts it, else None. Intervals below a
    minute would be a wake loop; the bounds are config.json's (us_config)."""
    if isinstance(v, bool):
        return None
    if k == us_proto.C_THRESHOLDS:
        if not isinstance(v, list):
            return None
        th = [x for x in v if isinstance(x, int) and not isinstance(x, bool) and 0 < x <= 100]
        return th[:_MAX_THRESHOLDS] if th else None
    if not isinstance(v, int):
        return None
    if k == us_proto.C_REPORT_INTERVAL_S or k == us_proto.C_HEARTBEAT_S:
        return v if 60 <= v <= 86400 else None
    if k == us_proto.C_BURST_LPH:
        return v if 0 < v <= 100000 else None
    if k == us_proto.C_MAG_THRESHOLD_UT:
        return v if 2 <= v <= 400 else None
    return None  # C_TIME_S and unknown keys: ignored


def apply_commands(state, dcnt, commands):
    """Apply a verified ack's commands once (DCnt above the last one seen); -> True when the
    applied configuration changed, the only case that needs a flash write.

    The gateway raises DCnt on every ack, so DCnt is persisted lazily, only with a change
    (else one flash write per ack). Why a replayed old ack cannot re-apply stale commands
    after a reboot that lost RTC memory:
    - send() applies an ack only when it acknowledges the frame being waited for, and the
      MIC covers that FCnt; FCnt never repeats, across reboots too (the flash reservation),
      so an old ack acknowledges nothing the node waits for and is never applied at all.
    - What remains is a frame's genuine ack arriving twice: the gateway re-sends its cached
      ack when the node retransmits, e.g. after a reset that kept RTC memory but missed its
      last save. Each change is written to flash at once with its DCnt D, and after any such
      reset the node resumes from the larger of RTC's and flash's DCnt (us_node.run_cycle),
      so every ack above it that the node applied left the configuration C unchanged;
      commands merge key by key, so applying one again gives C again, in any number/order."""
    if dcnt <= state.get("dc", 0):
        return False
    state["dc"] = dcnt
    if not commands:
        return False
    down = state.get("dn") or {}
    changed = False
    for k in commands:
        v = _command(k, commands[k])
        if v is not None and down.get(k) != v:
            down[k] = v
            changed = True
    if changed:
        state["dn"] = down
    return changed


def send(hal, wdt, cfg, keys, state, n_new, nvs):
    """Send this cycle's n_new frames (the newest in the backlog) first, then the rest of
    the backlog oldest first, until one frame goes unacknowledged. The newest first: after
    an outage the current readings and the true drop count arrive before the history (the
    gateway accepts late frames inside its 64-counter window, PROTOCOL.md section 4)."""
    scfg = cfg["serial"]
    bl = state.get("bl")
    if not bl:
        return
    m = hal.machine
    kw = {"baudrate": scfg.get("baudrate", 115200)}
    if "tx" in scfg:  # both or neither: us_config.parse; on an ESP32 always (check_board)
        kw["tx"] = scfg["tx"]
        kw["rx"] = scfg["rx"]
    uart = m.UART(scfg.get("uart", 1), **kw)
    timeout_ms = scfg.get("ack_timeout_ms", ACK_TIMEOUT_MS)
    node_id = cfg["node_id"]
    rx = bytearray()
    k = len(bl) - n_new if n_new < len(bl) else 0
    for entry in bl[k:] + bl[:k]:
        fc = entry[0]
        uart.write(us_cobs.wrap(entry[1]))
        acked = False
        while True:
            pkt = _read_packet(hal, uart, timeout_ms, rx)
            if pkt is None:
                break
            try:
                dcnt, acked_fc, cmds = us_proto.decode_ack(keys, node_id, us_cobs.unwrap(pkt))
            except ValueError:
                continue  # noise, another node's ack, or a forgery: keep listening
            if acked_fc == fc:
                acked = True
                if apply_commands(state, dcnt, cmds):
                    # Written before the next ack is read: see apply_commands.
                    us_store.nvs_set_obj(nvs, us_store.NVS_DOWN, {"d": state["dc"], "c": state["dn"]})
                break
        wdt.feed()
        if not acked:
            break  # link down or gateway busy: keep the rest for the next wake
        bl.remove(entry)
