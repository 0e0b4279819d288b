"""urbansense: firmware, gateway and simulator for city sensor networks."""

__version__ = "0.1.0"
