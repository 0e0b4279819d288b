"""The wire protocol on the CPython side: one codec that the gateway, the simulator and the
benchmarks all import. Sans-I/O; docs/PROTOCOL.md is the spec and tests/vectors/ pins it.

- ``protocol``: frame header, keys, MIC, CTR, uplink verify and ack encode (sections 1, 2, 4, 5)
- ``framing``: serial COBS + CRC encapsulation and the stream splitter (section 7)
- ``body``: the strict reader of an uplink's decrypted body (section 3)
- ``quantities``: the body keys, alarm and flag bits, downlink commands (sections 3, 5)
- ``senml``: the SenML-CBOR pack the gateway publishes (section 8)
- ``senml_reader``: reading such packs back, for consumers and the collector (section 8)
- ``errors``: ``FrameError(reason=...)``, every decode failure

The simulator's shard workers import it on PyPy 3.9 (urbansense/compat.py): keep it 3.9-clean.
"""
