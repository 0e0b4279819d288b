"""The gateway's datagram input, byte format: one BLE advertisement per datagram. Sans-I/O.

docs/GATEWAY.md ("Datagram input") is the spec. A datagram is one CBOR (RFC 8949) array of
three items and nothing after it::

    [address: text, rssi_dbm: int, manufacturer_data: {company_id: uint16 -> bytes}]

- ``address``: the advertiser's address as text (e.g. "AA:BB:CC:00:00:01"), at most 64 bytes;
- ``rssi_dbm``: the received signal strength, an integer -127..20;
- ``manufacturer_data``: a map from company identifier (0..0xFFFF) to that company's
  manufacturer-specific data (a byte string of at most 27 bytes, BLE_MAX_FRAME), as bleak's
  ``AdvertisementData.manufacturer_data``.

At most MAX_DATAGRAM bytes. The simulator writes it; so may any outside tool (a replay of a
capture, a test rig, a second radio), which is why it is documented rather than private.
"""

from __future__ import annotations

import io
from typing import Final

import cbor2

from urbansense.wire.protocol import BLE_MAX_FRAME

MAX_DATAGRAM: Final = 512
MAX_ADDRESS_LEN: Final = 64
RSSI_DBM_RANGE: Final = (-127, 20)

Advert = tuple[str, int, dict[int, bytes]]


def encode_advert(address: str, rssi_dbm: int, manufacturer_data: dict[int, bytes]) -> bytes:
    """The datagram a sender writes to the gateway's socket."""
    return cbor2.dumps([address, rssi_dbm, manufacturer_data])


def decode_advert(data: bytes) -> Advert:
    """(address, rssi_dbm, manufacturer data) of one datagram; ValueError naming what is wrong."""
    if len(data) > MAX_DATAGRAM:
        raise ValueError(f"advert: {len(data)} bytes, more than {MAX_DATAGRAM}")
    fp = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(fp).decode()
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise ValueError(f"advert: not CBOR ({type(exc).__name__})") from None
    if fp.tell() != len(data):
        raise ValueError("advert: bytes after the array")
    if not isinstance(item, list) or len(item) != 3:
        raise ValueError("advert: not a 3-item array")
    address, rssi, mfr = item
    if not isinstance(address, str) or len(address.encode()) > MAX_ADDRESS_LEN:
        raise ValueError("advert: address not text of at most 64 bytes")
    if type(rssi) is not int or not RSSI_DBM_RANGE[0] <= rssi <= RSSI_DBM_RANGE[1]:
        raise ValueError("advert: rssi_dbm not an integer -127..20")
    if not isinstance(mfr, dict):
        raise ValueError("advert: manufacturer data not a map")
    out: dict[int, bytes] = {}
    for company, payload in mfr.items():
        if type(company) is not int or not 0 <= company <= 0xFFFF:
            raise ValueError("advert: company id not 0..0xFFFF")
        if not isinstance(payload, bytes) or len(payload) > BLE_MAX_FRAME:
            raise ValueError("advert: manufacturer data not bytes of at most 27")
        out[company] = payload
    return address, rssi, out
