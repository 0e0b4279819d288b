"""Another commit's code beside this tree, for a bench's ``--previous`` figure.

Contract: ``previous_tree(rev, dest, packages)`` unpacks the top-level folders ``packages`` of
commit ``rev`` of this repository (``git archive``) into the new directory ``dest`` and returns
it; ``subprocess.CalledProcessError`` when ``rev`` or a package is unknown. A bench puts
``dest`` first on ``sys.path`` (or passes it as a code root to its children), so the measured
packages come from ``rev`` while the bench itself, its workload and its harness stay this
tree's: the two figures differ only by the code measured.

Why one home: bench_gateway and bench_sd (``GATEWAY_PACKAGES``) and bench_collector
(``COLLECTOR_PACKAGES``) each give the previous figure beside the current one, the same way.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GATEWAY_PACKAGES = ("gateway", "urbansense")
COLLECTOR_PACKAGES = ("collector", "urbansense")


def previous_tree(rev: str, dest: Path, packages: tuple[str, ...]) -> Path:
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, *packages],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest
