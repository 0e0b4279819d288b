"""Serial transport: cumulative drop count, flash writes per ack, replayed acks."""

from __future__ import annotations

import binascii
from collections.abc import Callable

from simulator.firmware_loader import firmware_module
from tests import fw_fakes as ff
from urbansense.wire.protocol import NodeKeys, Uplink, encode_ack, parse_header, verify_uplink

us_cobs = firmware_module("us_cobs")
us_node = firmware_module("us_node")
us_proto = firmware_module("us_proto")
us_serial = firmware_module("us_serial")
us_store = firmware_module("us_store")


KEYS = NodeKeys(binascii.unhexlify(ff.KEY_HEX))
NODE_ID = 0x01020304
HOUR_MS = 3600 * 1000


class Gateway:
    """The far end of the node's UART: decodes every frame, acks when online."""

    def __init__(self) -> None:
        self.online = True
        self.dcnt = 100
        self.commands: dict[int, object] | None = None
        self.delivered: list[Uplink] = []
        self.acks: list[bytes] = []
        self.extra: Callable[[Uplink], bytes] | None = None

    def __call__(self, data: bytes) -> bytes:
        frame = us_cobs.unwrap(data[:-1])
        up = verify_uplink(KEYS, frame, parse_header(frame), None)
        if not self.online:
            return b""
        self.delivered.append(up)
        if self.extra is not None:
            return self.extra(up)
        self.dcnt += 1
        ack = encode_ack(KEYS, NODE_ID, self.dcnt, up.fcnt, self.commands)
        self.acks.append(ack)
        return us_cobs.wrap(ack)


def serial_bin(backlog: int | None = None) -> tuple[ff.World, Gateway]:
    extra = {"serial": {"backlog": backlog}} if backlog else None
    w = ff.make_world("bin", transport="serial", extra=extra)
    gw = Gateway()
    w.uart_peer = gw
    return w, gw


def rtc(w: ff.World) -> dict:
    st = us_store.load_rtc(w.hal().machine.RTC())
    assert st is not None
    return st


def test_link_down_30_cycles_the_next_delivered_frame_carries_the_true_drop_total() -> None:
    w, gw = serial_bin(8)
    gw.online = False
    w.run_cycle(us_node)
    for _ in range(29):  # 30 cycles without a link: one report an hour, backlog 8
        w.sleep(HOUR_MS)
        w.run_cycle(us_node)
    gw.online = True
    w.sleep(HOUR_MS)
    w.run_cycle(us_node)
    built = rtc(w)["fc"]  # counters 0..fc-1 were built since the cold boot, none skipped
    true_dropped = built - 8  # all but the 8 the backlog could keep
    assert true_dropped > 20
    assert sorted(u.fcnt for u in gw.delivered) == list(range(built - 8, built))  # the oldest went
    assert gw.delivered[0].readings[us_proto.Q_DROPPED] == true_dropped
    assert len(gw.delivered) == 8 and rtc(w)["bl"] == []
    # every delivered frame's count is cumulative: never above the truth, never decreasing
    by_fcnt = sorted(gw.delivered, key=lambda u: u.fcnt)
    counts = [u.readings.get(us_proto.Q_DROPPED, 0) for u in by_fcnt]
    assert counts == sorted(counts) and max(counts) == true_dropped
    w.sleep(HOUR_MS)
    w.run_cycle(us_node)  # the count stays on later frames: a lost one loses nothing
    assert gw.delivered[-1].readings[us_proto.Q_DROPPED] == true_dropped


def test_acks_without_new_commands_write_no_flash() -> None:
    w, gw = serial_bin()
    w.run_cycle(us_node)
    writes = w.nvs_writes
    for _ in range(32):
        w.sleep(HOUR_MS)
        w.run_cycle(us_node)
    assert len(gw.acks) >= 32 and w.nvs_writes == writes
    assert rtc(w)["dc"] == gw.dcnt  # the DCnt still moves on, in RTC memory
    gw.commands = {us_proto.C_REPORT_INTERVAL_S: 1800}
    w.sleep(HOUR_MS)
    w.run_cycle(us_node)
    assert w.nvs_writes == writes + 1  # a change: written once, at once
    for _ in range(32):  # the same command again and again: no change, no write
        w.sleep(HOUR_MS)
        w.run_cycle(us_node)
    assert w.nvs_writes == writes + 1
    assert w.nvs["urbansense"]["down"] and rtc(w)["dn"] == {us_proto.C_REPORT_INTERVAL_S: 1800}


def test_replayed_acks_after_power_loss_do_not_reapply_stale_commands() -> None:
    w, gw = serial_bin()
    w.run_cycle(us_node)
    for cmd in (1800, None, None, 900, None, None):
        gw.commands = None if cmd is None else {us_proto.C_REPORT_INTERVAL_S: cmd}
        w.sleep(HOUR_MS)
        w.run_cycle(us_node)
    history = list(gw.acks)
    assert rtc(w)["dn"] == {us_proto.C_REPORT_INTERVAL_S: 900}
    w.power_loss()
    # An attacker (or a confused gateway) answers every frame with all the old acks, in
    # both orders: none acknowledges a frame the node is waiting for.
    gw.extra = lambda up: b"".join(us_cobs.wrap(a) for a in history + history[::-1])
    writes = w.nvs_writes
    w.run_cycle(us_node)
    st = rtc(w)
    assert st["dn"] == {us_proto.C_REPORT_INTERVAL_S: 900}
    assert st["bl"]  # not acknowledged: kept for a real ack
    assert w.nvs_writes - writes <= 1  # at most the frame counter's reservation
    gw.extra = None
    w.sleep(HOUR_MS)
    w.run_cycle(us_node)
    assert rtc(w)["bl"] == [] and rtc(w)["dn"] == {us_proto.C_REPORT_INTERVAL_S: 900}


def test_reset_that_missed_the_rtc_save_resumes_from_the_flash_dcnt() -> None:
    """A change is written to flash at once; a cycle that then hung before saving RTC
    memory leaves an older DCnt and configuration there. After the reset the newer (flash)
    wins, so a re-sent cached ack below it cannot bring the older command back."""
    w, gw = serial_bin()
    w.run_cycle(us_node)
    gw.commands = {us_proto.C_REPORT_INTERVAL_S: 1800}
    w.sleep(HOUR_MS)
    w.run_cycle(us_node)
    stale_blob = w.rtc_mem  # DCnt and command of the 1800 ack
    gw.commands = {us_proto.C_REPORT_INTERVAL_S: 900}
    w.sleep(HOUR_MS)
    w.run_cycle(us_node)
    flash_dcnt = gw.dcnt
    w.rtc_mem = stale_blob  # as if the 900 cycle had hung before its last RTC save
    w.watchdog_reset()
    gw.online = False
    w.run_cycle(us_node)
    st = rtc(w)
    assert st["dn"] == {us_proto.C_REPORT_INTERVAL_S: 900} and st["dc"] == flash_dcnt


def test_downlink_intervals_below_a_minute_are_refused() -> None:
    w, gw = serial_bin()
    gw.commands = {us_proto.C_REPORT_INTERVAL_S: 1, us_proto.C_HEARTBEAT_S: 0, us_proto.C_THRESHOLDS: [0, 101]}
    w.run_cycle(us_node)
    assert not rtc(w).get("dn")
    w.sleep(HOUR_MS)
    assert w.run_cycle(us_node) >= 60000


def test_each_frame_reports_the_dcnt_of_the_last_ack_the_node_accepted() -> None:
    """Quantity 14: how the gateway learns a downlink was applied (docs/PROTOCOL.md section 5)."""
    w, gw = serial_bin()
    w.run_cycle(us_node)
    assert us_proto.Q_DCNT not in gw.delivered[0].readings  # no ack accepted yet
    first_ack_dcnt = gw.dcnt
    w.sleep(HOUR_MS)
    w.run_cycle(us_node)
    assert gw.delivered[-1].readings[us_proto.Q_DCNT] == first_ack_dcnt
    gw.online = False  # the ack of this cycle's frame is lost: dc does not move
    w.sleep(HOUR_MS)
    w.run_cycle(us_node)
    assert rtc(w)["dc"] == first_ack_dcnt + 1


def _other_ack() -> bytes:
    """A genuine ack for another node on the same line (its key, its id)."""
    return encode_ack(NodeKeys(bytes(range(16))), NODE_ID + 1, 7, 0)


def test_the_ack_is_found_among_other_packets_in_one_read() -> None:
    """A delimiter first (a sender flushing the receiver), another node's ack and a corrupt
    packet, then ours, all in one read: each packet is split at its own delimiter, the
    others are skipped and ours is taken."""
    w, gw = serial_bin()

    def reply(up: Uplink) -> bytes:
        ack = encode_ack(KEYS, NODE_ID, 200 + up.fcnt, up.fcnt)
        return b"\x00" + us_cobs.wrap(_other_ack()) + b"\x05\x01\x02\x00" + us_cobs.wrap(ack)

    gw.extra = reply
    w.run_cycle(us_node)
    assert [u.fcnt for u in gw.delivered] == [0, 1] and rtc(w)["bl"] == []


def test_an_ack_behind_noise_longer_than_the_receive_buffer_is_read() -> None:
    """Noise without a delimiter beyond the 128-byte receive buffer, then the ack and a line
    held low (zero bytes, a break): the buffer keeps the last 128 bytes as they came, so the
    ack is read whole."""
    w, gw = serial_bin()

    def reply(up: Uplink) -> bytes:
        packet = us_cobs.wrap(encode_ack(KEYS, NODE_ID, 200 + up.fcnt, up.fcnt))
        return bytes(range(1, 201)) + packet + bytes(128 - len(packet))

    gw.extra = reply
    w.run_cycle(us_node)
    assert [u.fcnt for u in gw.delivered] == [0, 1] and rtc(w)["bl"] == []


def test_a_cycle_s_frames_go_out_in_the_order_built_and_a_small_backlog_keeps_the_newest() -> None:
    """A water node's cold boot with the lid open builds three frames (status, alarm, report).
    With room for two, the oldest (status) is dropped and counted, and the two kept reach
    the gateway in the order built; with room for all three, all three go, in order."""
    for backlog, want in ((2, [1, 2]), (8, [0, 1, 2])):
        extra = {"serial": {"backlog": backlog}, "calibration": {"tamper": True}}
        w = ff.make_world("water", transport="serial", extra=extra)
        gw = Gateway()
        w.uart_peer = gw
        w.pins[w.board["pins"]["tamper"]] = 1
        w.run_cycle(us_node)
        assert [u.fcnt for u in gw.delivered] == want, backlog
        assert [u.readings.get(us_proto.Q_DROPPED, 0) for u in gw.delivered] == [3 - len(want)] * len(want)


def test_a_downlink_is_applied_once_and_only_above_the_last_dcnt() -> None:
    """A fresh gateway's first ack (DCnt 1) is applied; an ack that reuses the DCnt of one
    already applied, or goes below it, is not, even with other commands, and costs no
    flash write; the frame it acknowledges is safe all the same."""
    w, gw = serial_bin()
    plan = [(1, {us_proto.C_REPORT_INTERVAL_S: 1800}), (2, None),  # the cold boot's two frames
            (2, {us_proto.C_REPORT_INTERVAL_S: 900}), (1, {us_proto.C_REPORT_INTERVAL_S: 600})]

    def reply(up: Uplink) -> bytes:
        dcnt, cmds = plan.pop(0)
        return us_cobs.wrap(encode_ack(KEYS, NODE_ID, dcnt, up.fcnt, cmds))

    gw.extra = reply
    w.run_cycle(us_node)
    assert rtc(w)["dc"] == 2 and rtc(w)["dn"] == {us_proto.C_REPORT_INTERVAL_S: 1800}
    writes = w.nvs_writes
    for _ in range(2):
        w.sleep(HOUR_MS)
        w.run_cycle(us_node)
        st = rtc(w)
        assert st["dn"] == {us_proto.C_REPORT_INTERVAL_S: 1800} and st["dc"] == 2
        assert st["bl"] == []
    assert plan == [] and w.nvs_writes == writes, w.nvs_writes - writes


def test_the_uart_is_the_configured_one_and_its_defaults_are_the_gateway_s() -> None:
    """serial.uart, serial.baudrate, serial.tx/rx and serial.ack_timeout_ms are used as
    configured; without them the node opens UART 1 at the gateway's default baud rate and
    gives up on an ack after 300 ms awake (the time a dead link costs each wake)."""
    from gateway.config import SerialConfig

    def awake_ms(serial: dict | None, online: bool) -> tuple[int, tuple[int, int], tuple]:
        w = ff.make_world("bin", transport="serial", extra={"serial": serial} if serial else None)
        gw = Gateway()
        gw.online = online
        w.uart_peer = gw
        t0 = w.clock_ms
        w.run_cycle(us_node)
        return w.clock_ms - t0, w.uart_port, w.uart_pins

    base, port, _ = awake_ms(None, True)
    assert port == (1, SerialConfig().baudrate)
    down, _, _ = awake_ms(None, False)
    assert down - base == us_serial.ACK_TIMEOUT_MS == 300
    cfg = {"uart": 2, "baudrate": 9600, "tx": 14, "rx": 13, "ack_timeout_ms": 1000}
    up_cfg, port, pins = awake_ms(cfg, True)
    assert (port, pins) == ((2, 9600), (14, 13))
    down_cfg, _, _ = awake_ms(cfg, False)
    assert down_cfg - up_cfg == 1000
