"""The gateway's exception tree: one base, data-carrying subclasses."""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """A configuration problem; ``key`` names the offending setting."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class OutboxFull(GatewayError):
    """The disk is full even after evicting old batches: this batch was not stored.

    ``frames`` were not committed, so none was acked: serial nodes retransmit theirs, BLE
    readings are lost. The caller counts them and rolls its replay marks back.
    """

    def __init__(self, frames: int, detail: str = "") -> None:
        super().__init__(f"outbox full, {frames} frames not stored" + (f": {detail}" if detail else ""))
        self.frames = frames
        self.detail = detail
