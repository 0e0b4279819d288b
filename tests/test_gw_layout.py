"""The gateway's imports follow its pipeline, and the product never imports its test double."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import gateway

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
    return out


def test_no_gateway_module_imports_the_simulator_or_the_tests() -> None:
    """Before: gateway/transports/ble.py imported simulator.bleak_backend (lazily)."""
    bad = {str(p.relative_to(ROOT)): sorted(m for m in _imports(p) if m.split(".")[0] in ("simulator", "tests"))
           for p in (ROOT / "gateway").rglob("*.py")}
    assert {p: m for p, m in bad.items() if m} == {}


def test_stages_take_what_flows_between_them_from_flow_not_from_each_other() -> None:
    """The batcher, dedup and the transports do not import verify; replay not the outbox."""
    for stage, upstream in (("batcher.py", "gateway.verify"), ("dedup.py", "gateway.verify"),
                            ("transports/serial.py", "gateway.verify"),
                            ("transports/ble.py", "gateway.verify"), ("replay.py", "gateway.outbox")):
        assert upstream not in _imports(ROOT / "gateway" / stage), stage


def test_metrics_are_registered_in_metrics_py_only() -> None:
    """Before: the BLE transport added six metrics to Metrics with setattr."""
    for p in (ROOT / "gateway").rglob("*.py"):
        if p.name != "metrics.py":
            assert "setattr(metrics" not in p.read_text() and "setattr(self.metrics" not in p.read_text(), p


def test_every_public_name_resolves_and_the_package_import_is_light() -> None:
    assert gateway.__all__ and all(getattr(gateway, n) is not None for n in gateway.__all__)
    probe = "import sys, gateway, gateway.flow; print(sorted(m for m in ('aiomqtt', 'bleak', 'simulator') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                         cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"
