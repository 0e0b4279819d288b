"""The urbansense gateway: transports -> verify -> batch -> outbox -> publisher (docs/GATEWAY.md).

The names below are its public API; everything else is internal to the package. They are
imported on first use, so ``import gateway.flow`` stays light (no MQTT, no bleak).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Gateway": "gateway.app",
    "GatewayConfig": "gateway.config",
    "load_config": "gateway.config_toml",
    "GatewayError": "gateway.errors",
    "ConfigError": "gateway.errors",
    "OutboxFull": "gateway.errors",
    "Heard": "gateway.flow",
    "Accepted": "gateway.flow",
    "Duplicate": "gateway.flow",
    "Verdict": "gateway.flow",
    "NodeRow": "gateway.flow",
    "Metrics": "gateway.metrics",
    "Registry": "gateway.registry",
    "load_registry": "gateway.registry",
    "Transport": "gateway.transports",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gateway' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
