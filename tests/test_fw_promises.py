"""The firmware's persistence promises, on CPython through the project's loader.

docs/PROTOCOL.md 2.1: a frame counter never repeats for the life of the key, across deep
sleep, watchdog resets and power loss at any point, the counter equal to the flash
reservation included; a cold boot skips at most one block. us_store: RTC state (or its config
cache) whose CRC fails is never trusted, even when its JSON still parses.
"""


from __future__ import annotations

import json

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from simulator.firmware_loader import firmware_module
from tests import fw_fakes as ff

us_store = firmware_module("us_store")

EVENTS = ("sleep", "wdt", "power_loss", "power_loss_before_save")
# Few frames a wake mostly, as a node sends; whole blocks too, so wakes end on the reservation.
FRAMES_PER_WAKE = st.one_of(
    st.integers(0, 3),
    st.sampled_from([us_store.FCNT_BLOCK - 1, us_store.FCNT_BLOCK, us_store.FCNT_BLOCK + 1]),
    st.integers(0, 2 * us_store.FCNT_BLOCK + 2),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(FRAMES_PER_WAKE, st.sampled_from(EVENTS)), max_size=20),
    st.sampled_from([0, us_store.FCNT_BLOCK, 5 * us_store.FCNT_BLOCK, 1000]),
)
def test_frame_counters_never_repeat_across_any_power_loss(wakes: list[tuple[int, str]], res0: int) -> None:
    """Each wake builds ``n`` frames, saves its RTC state before anything goes on air (as
    us_node does), then sleeps, is reset by the watchdog, or loses power (after that save, or
    before it: then nothing it built went on air)."""
    w = ff.make_world("water")
    nvs = ff.FakeNVS(w, us_store.NVS_NAMESPACE)
    if res0:
        nvs.set_i32(us_store.NVS_FCNT, res0)
    rtc = w.hal().machine.RTC()
    on_air: list[int] = []
    resume_from: int | None = None  # the next counter when the power went, after a clean save
    state: dict[str, object] = {}
    for n, event in wakes:
        counter = us_store.FrameCounter(nvs, state)
        built = [counter.next() for _ in range(n)]
        if event == "power_loss_before_save":
            w.power_loss()
            resume_from = None  # counters taken but not saved: the gap may be larger
        else:
            us_store.save_rtc(rtc, state)
            if built and resume_from is not None:
                assert built[0] - resume_from <= us_store.FCNT_BLOCK, "a cold boot skipped more than a block"
            on_air += built
            resume_from = None
            if event == "power_loss":
                w.power_loss()
                resume_from = int(state["fc"])  # type: ignore[call-overload]
        state = us_store.load_rtc(rtc) or {}
        assert bool(state) == (event in ("sleep", "wdt"))
    assert len(set(on_air)) == len(on_air), "a frame counter repeated"
    assert on_air == sorted(on_air)
    assert not on_air or on_air[0] >= res0


def _flip_a_digit(blob: bytearray, start: int, data: st.DataObject) -> None:
    """Change one decimal digit at or after ``start``: the JSON keeps its shape."""
    digits = [i for i in range(start, len(blob)) if 0x30 <= blob[i] <= 0x39]
    i = data.draw(st.sampled_from(digits))
    blob[i] = 0x30 + (blob[i] - 0x30 + data.draw(st.integers(1, 9))) % 10


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text("abcdefgh", min_size=1, max_size=4), st.integers(0, 10**6), min_size=1),
       st.data())
def test_rtc_state_failing_its_crc_is_never_trusted_though_its_json_parses(
    state: dict[str, int], data: st.DataObject
) -> None:
    w = ff.make_world("water")
    rtc = w.hal().machine.RTC()
    us_store.save_rtc(rtc, dict(state))
    assert us_store.load_rtc(rtc) == state
    blob = bytearray(w.rtc_mem)
    header = len(blob) - len(json.dumps(state, separators=(",", ":")))
    _flip_a_digit(blob, header, data)
    try:
        changed = json.loads(blob[header:].decode())
    except ValueError:
        changed = None
    assume(isinstance(changed, dict) and changed != state)  # still parses, says something else
    w.rtc_mem = bytes(blob)
    assert us_store.load_rtc(rtc) is None


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 0xFFFFFF), st.integers(60, 86400), st.data())
def test_a_config_cache_failing_its_crc_is_never_trusted_though_its_json_parses(
    node_id: int, interval_s: int, data: st.DataObject
) -> None:
    cfg = {"key": "00112233445566778899aabbccddeeff", "node_id": node_id,
           "intervals": {"report_interval_s": interval_s}}
    sec = us_store.config_section(cfg, {"kind": "water"})
    got = us_store.load_config({us_store.CONFIG_CACHE: sec})
    assert got is not None and got[0]["node_id"] == node_id
    blob = bytearray(sec)
    _flip_a_digit(blob, 7, data)
    try:
        json.loads(blob[7:].decode())
    except ValueError:
        assume(False)
    assert us_store.load_config({us_store.CONFIG_CACHE: bytes(blob)}) is None


def _saved(state: dict[str, object]) -> tuple[ff.World, object, bytes]:
    w = ff.make_world("water")
    rtc = w.hal().machine.RTC()
    us_store.save_rtc(rtc, state)
    return w, rtc, bytes(w.rtc_mem)


def test_a_torn_or_foreign_rtc_blob_reads_as_a_cold_boot() -> None:
    w, rtc, blob = _saved({"fc": 5, "fr": 256})
    assert us_store.load_rtc(rtc) == {"fc": 5, "fr": 256}
    for i in range(10):  # every header byte: magic, version, CRC kind, length, CRC
        for flip in (0x01, 0x80):
            bad = bytearray(blob)
            bad[i] ^= flip
            w.rtc_mem = bytes(bad)
            assert us_store.load_rtc(rtc) is None, (i, flip)
    for cut in range(len(blob)):  # torn while written
        w.rtc_mem = blob[:cut]
        assert us_store.load_rtc(rtc) is None, cut
    w.rtc_mem = blob + b"C" + bytes(6)  # a tail too short to be a config section
    assert us_store.load_rtc(rtc) == {"fc": 5, "fr": 256}


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.integers(1, 9), st.integers(0, 86400), max_size=3),
       st.lists(st.tuples(st.integers(0, 2**32 - 1), st.binary(min_size=1, max_size=24)), max_size=4),
       st.booleans())
def test_rtc_state_round_trips_and_the_callers_dict_is_left_as_it_was(
    dn: dict[int, int], bl: list[tuple[int, bytes]], with_cache: bool
) -> None:
    cache = us_store.config_section({"key": "00" * 16, "node_id": 7}, {"kind": "water"})
    state: dict[str, object] = {"fc": 9, "fr": 256, "dn": dict(dn), "bl": [[f, b] for f, b in bl]}
    if with_cache:
        state[us_store.CONFIG_CACHE] = cache
    before = {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
              for k, v in state.items()}
    _w, rtc, _ = _saved(state)
    assert state == before  # save_rtc maps on a copy and puts the cache back
    back = us_store.load_rtc(rtc)
    assert back is not None
    want = {k: v for k, v in before.items() if v or k in ("fc", "fr")}
    got = {k: v for k, v in back.items() if v or k in ("fc", "fr")}
    assert got == want
    if with_cache:
        assert us_store.load_config(back) is not None
        us_store.drop_config_cache(rtc)
        dropped = us_store.load_rtc(rtc)
        assert dropped is not None and us_store.CONFIG_CACHE not in dropped
        assert dropped["fc"] == 9


def test_nvs_objects_round_trip_and_absent_or_oversized_read_as_none() -> None:
    w = ff.make_world("water")
    nvs = ff.FakeNVS(w, us_store.NVS_NAMESPACE)
    assert us_store.nvs_get_obj(nvs, "down") is None
    assert us_store.nvs_get_int(nvs, "x", 7) == 7
    us_store.nvs_set_obj(nvs, "down", {1: 900, 2: [1, 2]})
    assert us_store.nvs_get_obj(nvs, "down") == {1: 900, 2: [1, 2]}
    us_store.nvs_set_obj(nvs, "big", list(range(200)))
    assert us_store.nvs_get_obj(nvs, "big", max_len=16) is None
    us_store.nvs_set_int(nvs, "x", -5)
    assert us_store.nvs_get_int(nvs, "x", 7) == -5


def test_rtc_state_is_compact_and_sized_to_the_byte() -> None:
    """RTC memory is 2 KiB: the state is compact JSON, a blob of exactly 2048 bytes is
    written, one byte more is refused; the config cache rides along only while the whole stays
    within RTC_CACHE_MAX_BYTES."""
    _, _, blob = _saved({"fc": 1, "fr": 256, "dn": {1: 900}})
    assert b", " not in blob and b": " not in blob
    head = len(_saved({"x": ""})[2])  # header + {"x":""}
    _, _, exact = _saved({"x": "a" * (us_store.RTC_MAX_BYTES - head)})
    assert len(exact) == us_store.RTC_MAX_BYTES
    with pytest.raises(ValueError, match=r"^rtc state too large$"):
        _saved({"x": "a" * (us_store.RTC_MAX_BYTES - head + 1)})
    cache = us_store.config_section({"key": "00" * 16, "node_id": 7}, {"kind": "water"})
    assert b", " not in cache and b": " not in cache
    room = us_store.RTC_CACHE_MAX_BYTES - len(cache) - head
    for pad, kept in ((room, True), (room + 1, False)):
        _, rtc2, blob2 = _saved({"x": "a" * pad, us_store.CONFIG_CACHE: cache})
        back = us_store.load_rtc(rtc2)
        assert back is not None and (us_store.CONFIG_CACHE in back) is kept, pad
        assert len(blob2) == head + pad + (len(cache) if kept else 0)


def test_the_config_cache_keeps_falsy_settings_and_restores_empty_sections() -> None:
    cfg = {"key": "00" * 16, "node_id": 0, "tamper": False, "intervals": {}, "ble": {"tx_dbm": 0}}
    sec = us_store.config_section(cfg, {"kind": "water"})
    assert b"intervals" not in sec  # empty sections are not stored
    got = us_store.load_config({us_store.CONFIG_CACHE: sec})
    assert got is not None
    back, board = got
    assert back["node_id"] == 0 and back["tamper"] is False and back["ble"] == {"tx_dbm": 0}
    assert back["intervals"] == {} and back["key_bytes"] == bytes(16) and board == {"kind": "water"}
    assert us_store.load_config(None) is None and us_store.load_config({}) is None


def test_drop_config_cache_keeps_a_long_state_and_ignores_an_empty_rtc() -> None:
    cache = us_store.config_section({"key": "00" * 16, "node_id": 7}, {"kind": "water"})
    state = {"fc": 3, "fr": 256, "bl": [[i, bytes(20)] for i in range(8)]}  # body > 256 bytes
    w, rtc, blob = _saved({**state, us_store.CONFIG_CACHE: cache})
    assert len(blob) > 256 + len(cache)
    us_store.drop_config_cache(rtc)
    back = us_store.load_rtc(rtc)
    assert back is not None and us_store.CONFIG_CACHE not in back and back["fc"] == 3 and len(back["bl"]) == 8
    w.rtc_mem = b""
    us_store.drop_config_cache(rtc)
    assert w.rtc_mem == b""
    w.rtc_mem = blob[:6]
    us_store.drop_config_cache(rtc)
    assert w.rtc_mem == blob[:6]


def test_nvs_reads_default_to_zero_and_a_blob_over_max_len_is_none() -> None:
    w = ff.make_world("water")
    nvs = ff.FakeNVS(w, us_store.NVS_NAMESPACE)
    assert us_store.nvs_get_int(nvs, "never") == 0
    us_store.nvs_set_obj(nvs, "a", bytes(254))  # 2 bytes of CBOR head: 256 in all
    assert us_store.nvs_get_obj(nvs, "a") == bytes(254)
    us_store.nvs_set_obj(nvs, "b", bytes(255))  # 257
    assert us_store.nvs_get_obj(nvs, "b") is None
