"""What the simulator's shard workers need to run on PyPy 3.9 as well as CPython 3.11.

Debian bookworm's pypy3 is Python 3.9: a 10,000-node day runs about twice as fast there
(bench/bench_sim.py), so the modules a shard imports stay 3.9-clean at run time (annotations
are strings under ``from __future__ import annotations``; run-time unions are spelled out).
"""

from __future__ import annotations

import sys
from typing import Any, Final

# dataclass(slots=True) arrived in 3.10: on 3.9 the classes are plain dataclasses.
DATACLASS_SLOTS: Final[dict[str, Any]] = {"slots": True} if sys.version_info >= (3, 10) else {}

if sys.version_info >= (3, 11):  # noqa: UP036 - shard workers run on PyPy 3.9 too
    import tomllib
else:  # pragma: no cover - PyPy 3.9 shard workers (tomli is in their environment)
    import tomli as tomllib

__all__ = ["DATACLASS_SLOTS", "tomllib"]
