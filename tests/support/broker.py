"""The private test broker lives in the package (the demo and bench use it too)."""

from urbansense.broker import (
    SETUP_HINT,
    Broker,
    BrokerUnavailable,
    TlsMaterial,
    find_tool,
    free_port,
    make_client_cert,
    make_password_file,
    make_tls_material,
)

__all__ = [
    "SETUP_HINT",
    "Broker",
    "BrokerUnavailable",
    "TlsMaterial",
    "find_tool",
    "free_port",
    "make_client_cert",
    "make_password_file",
    "make_tls_material",
]
