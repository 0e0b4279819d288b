"""tools/mutation/fingerprint.py: a name listed as an equivalent mutant is excused only while it
is the mutant that was reviewed, so a renumbering can never hide a real mutant."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from mutation.fingerprint import (
    PINS_NAME,
    fingerprint,
    mutated_file,
    read_pins,
    still_reviewed,
    write_pins,
)

# What mutmut 3 writes for a module: the original as NAME__mutmut_orig, each mutant beside it.
_MUTATED = '''
def x_save__mutmut_orig(fc, reserved):
    if fc >= reserved:
        return reserve(fc + 100)
    return reserved

def x_save__mutmut_1(fc, reserved):
    if fc > reserved:
        return reserve(fc + 100)
    return reserved

def x_save__mutmut_2(fc, reserved):
    if fc >= reserved:
        return reserve(fc + 101)
    return reserved

class Store:
    def xǁStoreǁload__mutmut_orig(self):
        return self._read(0)
    def xǁStoreǁload__mutmut_1(self):
        return self._read(1)
'''


def _run(tmp_path: Path, text: str) -> Path:
    mutants = tmp_path / "mutants"
    (mutants / "src").mkdir(parents=True, exist_ok=True)
    (mutants / "src" / "us_store.py").write_text(text)
    return mutants


def test_a_mutant_of_the_firmware_and_of_a_package_is_found_where_mutmut_writes_it(tmp_path: Path) -> None:
    assert mutated_file(tmp_path, "us_store.x_save__mutmut_1") == tmp_path / "src/us_store.py"
    assert mutated_file(tmp_path, "gateway.outbox._sqlite.x_connect__mutmut_8") == tmp_path / "gateway/outbox/_sqlite.py"


def test_the_hash_is_what_the_mutant_changes_not_its_number(tmp_path: Path) -> None:
    mutants = _run(tmp_path, _MUTATED)
    one, two = fingerprint(mutants, "us_store.x_save__mutmut_1"), fingerprint(mutants, "us_store.x_save__mutmut_2")
    assert one and two and one != two
    assert fingerprint(mutants, "us_store.xǁStoreǁload__mutmut_1") not in (None, one, two)
    # The source changed and mutmut renumbered: mutant 1 is now what mutant 2 was.
    renumbered = _run(tmp_path / "later", _MUTATED.replace(
        "    if fc > reserved:\n        return reserve(fc + 100)", "    if fc >= reserved:\n        return reserve(fc + 101)"))
    assert fingerprint(renumbered, "us_store.x_save__mutmut_1") == two
    assert fingerprint(mutants, "us_store.x_save__mutmut_7") is None  # no such mutant
    assert fingerprint(tmp_path / "nowhere", "us_store.x_save__mutmut_1") is None


def test_a_listed_name_is_excused_only_while_its_pin_matches(tmp_path: Path) -> None:
    mutants = _run(tmp_path, _MUTATED)
    bench = tmp_path / "bench"
    bench.mkdir()
    write_pins(bench, {"us_store.x_save__mutmut_1": str(fingerprint(mutants, "us_store.x_save__mutmut_1"))})
    pins = read_pins(bench)
    assert still_reviewed(mutants, "us_store.x_save__mutmut_1", pins)
    assert not still_reviewed(mutants, "us_store.x_save__mutmut_2", pins)  # listed, never pinned
    renumbered = _run(tmp_path / "later", _MUTATED.replace(
        "    if fc > reserved:\n        return reserve(fc + 100)", "    if fc >= reserved:\n        return reserve(fc + 101)"))
    assert not still_reviewed(renumbered, "us_store.x_save__mutmut_1", pins)
    (bench / PINS_NAME).write_text("not json")
    assert read_pins(bench) == {}


def test_every_listed_equivalent_is_pinned() -> None:
    import re

    bench = Path(__file__).resolve().parents[1] / "bench"
    listed = set(re.findall(r"`([^`\s]+__mutmut_\d+)`", (bench / "mutation-equivalents.md").read_text()))
    pins = read_pins(bench)
    # a bare function-relative name in the prose is not a listing (no module)
    unpinned = {n for n in listed if "." in n and n not in pins}
    assert not unpinned, f"listed without a pin (run tools/mutate.py --pin-equivalents): {sorted(unpinned)}"
