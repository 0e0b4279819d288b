"""Cut the power of a process that ran under tests/support/powercut.c (LD_PRELOAD).

``library(dir)`` compiles the shim; ``env(data_dir, lib)`` is what the process needs;
``arm(data_dir)`` before each life records every file as durable (what the previous cut
left is on disk); after SIGKILL, ``cut(data_dir, rng, torn)`` puts each file back as a power
cut would leave it: the image of its last fsync, plus, when ``torn``, a random half of the
512-byte sectors written since (a drive may have written some before the power went; each
sector whole, old or new, as SQLite assumes of a disk). A file never synced is gone, and
SQLite's -shm (memory-mapped, rebuilt from the WAL) is deleted.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("powercut.c")
SECTOR = 512
_SIDE = (".dirty", ".durable")


class PowercutUnavailable(RuntimeError):
    pass


def library(out_dir: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise PowercutUnavailable("no C compiler (apt-get install gcc libc6-dev)")
    lib = out_dir / "powercut.so"
    proc = subprocess.run([cc, "-shared", "-fPIC", "-O1", "-Wall", "-o", str(lib), str(SOURCE), "-ldl"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise PowercutUnavailable(f"cc failed: {proc.stderr[-500:]}")
    return lib


def env(data_dir: Path, lib: Path) -> dict[str, str]:
    return {**os.environ, "LD_PRELOAD": str(lib), "POWERCUT_DIR": str(data_dir.resolve())}


def _files(data_dir: Path) -> list[Path]:
    return [p for p in data_dir.iterdir() if p.is_file() and not p.name.endswith(_SIDE)]


def arm(data_dir: Path) -> None:
    """Every file as it is now is durable; nothing is dirty."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for p in data_dir.iterdir():
        if p.name.endswith(_SIDE):
            p.unlink()
    for p in _files(data_dir):
        shutil.copyfile(p, p.with_name(p.name + ".durable"))


def cut(data_dir: Path, rng: random.Random, torn: bool) -> dict[str, int]:
    """The files as the power cut leaves them; returns how many sectors of unsynced writes
    were kept and dropped."""
    kept = dropped = 0
    for p in _files(data_dir):
        image = p.with_name(p.name + ".durable")
        if p.name.endswith("-shm") or not image.exists():
            p.unlink()
            continue
        data = bytearray(image.read_bytes())
        dirty = p.with_name(p.name + ".dirty")
        if dirty.exists():
            current = p.read_bytes()
            for line in dirty.read_text().splitlines():
                op, a, b = line.split()
                if op != "W":
                    continue
                start, end = int(a), int(a) + int(b)
                for s in range(start - start % SECTOR, end, SECTOR):
                    lo, hi = max(s, start), min(s + SECTOR, end, len(current))
                    if hi <= lo:
                        continue
                    if torn and rng.random() < 0.5:
                        if len(data) < hi:
                            data.extend(bytes(hi - len(data)))
                        data[lo:hi] = current[lo:hi]
                        kept += 1
                    else:
                        dropped += 1
        p.write_bytes(bytes(data))
    for p in data_dir.iterdir():
        if p.name.endswith(_SIDE):
            p.unlink()
    return {"kept_sectors": kept, "dropped_sectors": dropped}
