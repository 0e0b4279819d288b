"""The battery table of docs/BUILD-IMAGE.md: each image's boot figures, capped at shelf life."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from simulator.energy import CELLS, boot_only_life_years, load_board

ROOT = Path(__file__).resolve().parents[1]


def _cell_text(image: str | None, wakes: int) -> str:
    cell = CELLS["lisocl2_d_19ah"]
    _, prof = load_board("city-wroom32e", image=image)
    avg = prof.deep_sleep_ua + prof.static_ua + prof.boot_uc * wakes / 86400
    years = boot_only_life_years(prof, cell, wakes)
    if cell.capped(avg):
        return f"{cell.shelf_life_years:.0f} years, capped ({cell.uncapped_life_years(avg):.1f})"
    return f"{years:.1f} years"


def test_the_documented_table_is_what_the_model_gives() -> None:
    doc = (ROOT / "docs" / "BUILD-IMAGE.md").read_text()
    rows = re.findall(r"^\| (\d+)[^|]* \| ([^|]+) \| ([^|]+) \|$", doc, re.M)
    assert len(rows) == 4
    for wakes, city, stock in rows:
        assert city.strip() == _cell_text(None, int(wakes))
        assert stock.strip() == _cell_text("stock", int(wakes))


def test_the_stock_image_costs_what_its_source_says_and_water_misses_16_years() -> None:
    _, stock = load_board("city-wroom32e", image="stock")
    _, city = load_board("city-wroom32e")
    # glenn20's ESP32-S3 stock wake without the image validation (stock since MicroPython
    # v1.21): a proxy, not an ESP32 figure, and the board file says so.
    assert stock.boot_ms == pytest.approx(418) and stock.boot_uc == pytest.approx(26_500)
    assert city.boot_uc == pytest.approx(3_300)
    assert 14 < boot_only_life_years(stock, CELLS["lisocl2_d_19ah"], 300) < 16
    for key in ("boot_ms", "boot_mc"):
        source = json.loads((ROOT / "boards" / "city-wroom32e.json").read_text())["power_images"]["stock"][key]["source"]
        assert source.startswith("PROXY, not an ESP32 figure") and "#12252" in source


def test_an_unknown_image_is_refused() -> None:
    with pytest.raises(ValueError, match="stock"):
        load_board("city-wroom32e", image="turbo")
