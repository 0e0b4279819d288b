# BLE broadcaster: non-connectable legacy advertising, one manufacturer-specific AD holding
# the frame (docs/PROTOCOL.md section 6). No Flags AD, so a 27-byte frame fits in 31 bytes.
try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[misc]  # CPython stand-in for micropython.const
        return x

COMPANY_ID_TEST = const(0xFFFF)
_AD_MANUFACTURER = const(0xFF)
_ADV_MAX = const(31)
INTERVAL_US = const(100000)
BURST_MS = const(350)  # ~3-4 advertising events x 3 channels per frame


def adv_payload(frame, company_id=COMPANY_ID_TEST):
    ad = bytearray(4 + len(frame))
    ad[0] = 3 + len(frame)
    ad[1] = _AD_MANUFACTURER
    ad[2] = company_id & 0xFF
    ad[3] = (company_id >> 8) & 0xFF
    ad[4:] = frame
    if len(ad) > _ADV_MAX:
        raise ValueError("ble: frame too long for legacy advertising")
    return bytes(ad)


def send(hal, frames, ble_cfg):
    """Advertise each frame for a burst; the radio is off before and after."""
    interval_us = ble_cfg.get("interval_us", INTERVAL_US)
    burst_ms = ble_cfg.get("burst_ms", BURST_MS)
    company_id = ble_cfg.get("company_id", COMPANY_ID_TEST)
    ble = hal.bluetooth.BLE()
    ble.active(True)
    try:
        for frame in frames:
            hal.energy("ble_tx")
            ble.gap_advertise(interval_us, adv_data=adv_payload(frame, company_id), connectable=False)
            hal.time.sleep_ms(burst_ms)
            ble.gap_advertise(None)
    finally:
        hal.energy("cpu")
        ble.active(False)
