"""``urbansense bench --only X`` keeps the other sections' figures; the collector section."""

from __future__ import annotations

from pathlib import Path

from urbansense.bench import previous_results, render


def test_a_partial_run_keeps_the_previous_figures_of_the_other_benches(tmp_path: Path) -> None:
    info = {"date": "2026-12-06 22:00 UTC", "only": [],
            "machine": {"cpu": "x", "cores": 2, "memory_gib": 1.0, "os": "linux", "python": "3.11"}}
    first = {"district": {"total": {"sent": 7}, "_command": "c"},
             "collector": {"postgres": {"readings_per_s": 61234}, "meets_floor_pg": True, "_command": "b"}}
    path = tmp_path / "RESULTS.md"
    path.write_text(render(first, info, quick=False))
    back = previous_results(path)
    assert back["district"]["total"]["sent"] == 7
    assert back["collector"]["postgres"]["readings_per_s"] == 61234
    text = path.read_text()
    assert "| readings stored per second, wall clock (floor 50,000 into PostgreSQL: met) | 61,234 |" in text
