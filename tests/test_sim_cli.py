"""``urbansense sim run``: --json prints only the summary, bit-identical for one seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from urbansense.cli import main

SMOKE = str(Path(__file__).resolve().parents[1] / "scenarios" / "smoke.toml")


def _run(capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    assert main(["sim", "run", "--scenario", SMOKE, "--duration", "3h", "--json", *extra]) == 0
    return capsys.readouterr().out


def test_json_only_and_reproducible(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    a = _run(capsys, "--seed", "5")
    b = _run(capsys, "--seed", "5", "--truth", str(tmp_path / "t.jsonl"))
    assert a == b
    summary = json.loads(a)  # one JSON object and nothing else on stdout
    assert summary["seed"] == 5 and summary["duration_s"] == 3 * 3600
    assert set(summary["frames"]) == {"parking", "bin", "water", "total"}
    assert (tmp_path / "t.jsonl").read_text().count("\n") == summary["frames"]["total"]["sent"]


def test_bad_scenario_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "run", "--scenario", "/nonexistent.toml"]) == 2
    assert "nonexistent" in capsys.readouterr().err


def test_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "run", "--scenario", SMOKE, "--duration", "2h", "--plots", str(tmp_path)]) == 0
    pngs = sorted(tmp_path.glob("*.png"))
    assert [p.name for p in pngs] == ["battery_life.png", "fill_levels.png", "occupancy.png"]
    for p in pngs:  # real images with something drawn, not empty files
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", p.name
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert (width, height) == (800, 350), p.name  # figsize 8 x 3.5 in at 100 dpi
        assert len(data) > 11_000, (p.name, len(data))  # empty axes: ~8 KB
