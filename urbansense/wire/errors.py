"""The wire codec's exception: every decode failure is one ``FrameError(reason=...)``."""

from __future__ import annotations


class WireError(Exception):
    """Base of every error the wire codec raises on purpose."""


class FrameError(WireError):
    """Outside bytes that are not a valid frame. ``reason`` is the counter label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
