# Serial transport: COBS+CRC frames on a UART, one ack per frame, a bounded backlog of
# unacknowledged frames in RTC memory, downlink commands applied once (DCnt).
try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[misc]  # CPython stand-in for micropython.const
        return x

import us_cobs
import us_proto

BACKLOG_MAX = const(8)
ACK_TIMEOUT_MS = const(300)
_POLL_MS = const(5)
_RX_MAX = const(128)


def enqueue(state, out, backlog_max=BACKLOG_MAX):
    """Append (fcnt, frame) pairs to state["bl"], dropping (and counting) the oldest when full."""
    bl = state.setdefault("bl", [])
    for fc, frame in out:
        bl.append([fc, frame])
    while len(bl) > backlog_max:
        bl.pop(0)
        state["dr"] = state.get("dr", 0) + 1
    return bl


def _read_packet(hal, uart, timeout_ms, rx):
    """Bytes up to the next 0x00 delimiter, or None at the deadline."""
    t = hal.time
    start = t.ticks_ms()
    while True:
        i = rx.find(b"\x00")
        if i >= 0:
            pkt = bytes(rx[:i])
            del rx[:i + 1]
            return pkt
        if t.ticks_diff(t.ticks_ms(), start) >= timeout_ms:
            return None
        data = uart.read() if uart.any() else None
        if data:
            rx.extend(data)
            if len(rx) > _RX_MAX:  # line noise without delimiters: keep the tail
                del rx[:len(rx) - _RX_MAX]
        else:
            t.sleep_ms(_POLL_MS)


def apply_commands(state, dcnt, commands):
    """Apply a verified ack's commands once; -> True when something was applied."""
    if dcnt <= state.get("dc", 0):
        return False
    state["dc"] = dcnt
    if commands:
        down = state.setdefault("dn", {})
        for k in commands:
            v = commands[k]
            if k in (us_proto.C_REPORT_INTERVAL_S, us_proto.C_HEARTBEAT_S, us_proto.C_BURST_LPH,
                     us_proto.C_MAG_THRESHOLD_UT) and isinstance(v, int) and v > 0:
                down[k] = v
            elif k == us_proto.C_THRESHOLDS and isinstance(v, list):
                down[k] = [x for x in v if isinstance(x, int) and 0 < x <= 100]
    return True


def send(hal, wdt, cfg, keys, state, out):
    """Send the backlog oldest first until one frame goes unacknowledged.

    Returns True when downlink state changed (the caller persists it to flash).
    """
    scfg = cfg["serial"]
    bl = enqueue(state, out, scfg.get("backlog", BACKLOG_MAX))
    if not bl:
        return False
    m = hal.machine
    kw = {"baudrate": scfg.get("baudrate", 115200)}
    if "tx" in scfg:
        kw["tx"] = scfg["tx"]
        kw["rx"] = scfg["rx"]
    uart = m.UART(scfg.get("uart", 1), **kw)
    timeout_ms = scfg.get("ack_timeout_ms", ACK_TIMEOUT_MS)
    node_id = cfg["node_id"]
    changed = False
    rx = bytearray()
    while bl:
        fc, frame = bl[0]
        uart.write(us_cobs.wrap(frame))
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
                    changed = True
                break
        wdt.feed()
        if not acked:
            break  # link down or gateway busy: keep the rest for the next wake
        bl.pop(0)
    return changed
