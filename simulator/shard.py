"""One shard of ``run_parallel`` in its own interpreter: ``python -m simulator.shard IN OUT``.

IN holds the pickled job, OUT receives the pickled result. The parent chooses the
interpreter (simulator.parallel.sim_python: PyPy when ``make setup`` could build it), so this
module and everything a shard imports stay valid on Python 3.9 (urbansense/compat.py).
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m simulator.shard JOB.pickle RESULT.pickle", file=sys.stderr)
        return 2
    from simulator.parallel import _shard_worker

    job = pickle.loads(Path(argv[0]).read_bytes())
    result = _shard_worker(job)
    tmp = Path(argv[1] + ".part")
    tmp.write_bytes(pickle.dumps(result, protocol=4))
    tmp.replace(argv[1])  # the parent reads a whole result or none
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
