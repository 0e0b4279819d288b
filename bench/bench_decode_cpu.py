"""Collector decode+rows CPU, for callgrind: the bench's backlog packs (50 water-meter frames
each) through ``collector.decode.decode`` and ``collector.rows.build``, no I/O.

Run under ``valgrind --tool=callgrind`` once as is and once with ``--no-decode`` (the same packs
are written, nothing is decoded): the difference in instructions over ``packs * 50`` is the
decode+rows cost per reading (load-independent).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packs", type=int, default=200)
    ap.add_argument("--no-decode", action="store_true")
    args = ap.parse_args()
    from bench.bench_collector import FRAMES_PER_PACK, _packs
    from collector.decode import decode
    from collector.rows import build

    packs = _packs(args.packs * FRAMES_PER_PACK, 1_700_000_000.0)
    decode("urbansense.v1.bench.gw0.up", _packs(FRAMES_PER_PACK, 1_700_000_000.0)[0])  # warm
    if args.no_decode:
        return
    readings = []
    for i, data in enumerate(packs):
        readings.extend(decode(f"urbansense.v1.bench.gw{i % 3}.up", data))  # type: ignore[arg-type]
    build(readings, [], 1_700_000_100.0)


if __name__ == "__main__":
    main()
