"""Ground truth from the firmware's own codec: what a node put into a frame.

The truth file must not lean on the gateway's decoder, or a gateway decoding bug would
agree with itself in every end-to-end comparison. Frames are opened here with the
firmware's modules (us_proto's key derivation and MIC, us_crypto's CTR, us_cbor's decoder)
and the node's key, as a node's peer built from the firmware would open them.
"""

from __future__ import annotations

from typing import Final

from simulator.firmware_loader import firmware_module

_FCNT_WINDOW: Final = 0x10000  # the frame carries the counter's low 16 bits


class FrameDecodeError(Exception):
    """A frame the firmware's codec cannot open; ``reason`` names why (counted by reason)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FirmwareCodec:
    """Opens uplinks of the nodes of one simulation (keys derived once per node)."""

    def __init__(self) -> None:
        self._proto = firmware_module("us_proto")
        self._cbor = firmware_module("us_cbor")
        self._crypto = firmware_module("us_crypto")
        self._keys: dict[bytes, object] = {}
        p = self._proto
        self._hdr_len = int(p.UP_HDR_LEN)
        self._mic_len = int(p.MIC_LEN)
        self._version = int(p.VERSION)
        self._dir_up = int(p.DIR_UP)

    def _node_keys(self, root_key: bytes) -> object:
        keys = self._keys.get(root_key)
        if keys is None:
            keys = self._proto.Keys(root_key)
            self._keys[root_key] = keys
        return keys

    def decode(self, root_key: bytes, node_id: int, frame: bytes,
               last_fcnt: int | None) -> tuple[int, int, dict[int, int | bool]]:
        """-> (full frame counter, frame type, readings) or FrameDecodeError.

        The full counter is the first value after ``last_fcnt`` with the frame's low 16 bits
        (the firmware skips at most one 256-counter block after a power loss), confirmed by
        the MIC.
        """
        hl, ml = self._hdr_len, self._mic_len
        if len(frame) < hl + ml:
            raise FrameDecodeError("short")
        if frame[0] >> 4 != self._version:
            raise FrameDecodeError("version")
        if int.from_bytes(frame[1:5], "little") != node_id:
            raise FrameDecodeError("wrong_node_id")
        keys = self._node_keys(root_key)
        low = frame[5] | (frame[6] << 8)
        base = 0 if last_fcnt is None else last_fcnt + 1
        first = base + ((low - base) % _FCNT_WINDOW)
        mic = frame[-ml:]
        head = frame[:-ml]
        for fcnt in (first, first - _FCNT_WINDOW, first + _FCNT_WINDOW):
            if fcnt >= 0 and self._proto._mic(keys.mic, self._dir_up, fcnt, head) == mic:  # type: ignore[attr-defined]
                break
        else:
            raise FrameDecodeError("bad_mic")
        plain = self._crypto.ctr_xor(keys.enc, self._dir_up, node_id, fcnt, 0, frame[hl:-ml])  # type: ignore[attr-defined]
        try:
            readings = self._cbor.decode(plain)
        except ValueError:
            raise FrameDecodeError("cbor") from None
        if not isinstance(readings, dict):
            raise FrameDecodeError("body_not_map")
        return fcnt, frame[0] & 0x0F, readings
