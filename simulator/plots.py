"""PNG plots of a finished run: occupancy, bin fill levels, battery-life projections."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from simulator.sim import Simulation


def write_plots(sim: Simulation, out_dir: str | Path) -> list[str]:
    """-> paths written. Needs matplotlib (a dev dependency)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_end = getattr(sim, "t_end", sim.engine.now)
    hours = [h * 0.25 for h in range(int(t_end / 900) + 1)]
    written: list[str] = []

    parking = [n for n in sim.nodes if n.kind == "parking"]
    if parking:
        occ = [sum(n.world.occupied(h * 3600) for n in parking) / len(parking) * 100 for h in hours]
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.plot(hours, occ, label="ground truth")
        reported = sorted((f.t, f.node, bool(f.readings[0])) for f in sim.frames
                          if f.node in {n.index for n in parking} and 0 in f.readings)
        state: dict[int, bool] = {}
        pts: list[tuple[float, float]] = []
        for t, node, o in reported:
            state[node] = o
            pts.append((t / 3600, sum(state.values()) / len(parking) * 100))
        if pts:
            ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", label="as reported", alpha=0.7)
        ax.set_xlabel("hour")
        ax.set_ylabel("occupied spaces (%)")
        ax.set_title(f"Parking occupancy, {len(parking)} spaces")
        ax.legend()
        p = out / "occupancy.png"
        fig.tight_layout()
        fig.savefig(p, dpi=100)
        plt.close(fig)
        written.append(str(p))

    bins = [n for n in sim.nodes if n.kind == "bin"]
    if bins:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        for n in bins[:12]:
            ax.plot(hours, [min(100.0, n.world.fill_pct(h * 3600)) for h in hours], lw=1)
        ax.set_xlabel("hour")
        ax.set_ylabel("fill (%)")
        ax.set_title(f"Bin fill levels (ground truth, {min(12, len(bins))} of {len(bins)})")
        p = out / "fill_levels.png"
        fig.tight_layout()
        fig.savefig(p, dpi=100)
        plt.close(fig)
        written.append(str(p))

    fig, ax = plt.subplots(figsize=(8, 3.5))
    kinds = sorted({n.kind for n in sim.nodes})
    data = []
    for k in kinds:
        ns = [n for n in sim.nodes if n.kind == k]
        data.append([sim.cell.life_years(sum(n.charge_to(t_end).values()) / t_end + n.profile.static_ua)
                     for n in ns])
    ax.boxplot(data)
    ax.set_xticks(range(1, len(kinds) + 1), kinds)
    ax.axhline(12, ls="--", c="grey", lw=1)
    ax.axhline(16, ls=":", c="grey", lw=1)
    ax.set_ylabel("projected battery life (years)")
    ax.set_title(f"Battery life on {sim.cell.name}")
    p = out / "battery_life.png"
    fig.tight_layout()
    fig.savefig(p, dpi=100)
    plt.close(fig)
    written.append(str(p))
    return written
