"""Plots of a report's analysis dict: category averages and per-task differences (matplotlib, no pyplot)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..stats.multiple import significance
from ..stats.paired import PairedResult
from .analysis import oriented


def _colors(columns: list[str], references: list[str]) -> dict[str, Any]:
    """Designs in tab10's colours, reference rows in greys (the first, the baseline's, as before)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    out, i = {}, 0
    for c in columns:
        if c in references:
            out[c] = str([0.6, 0.4, 0.75, 0.3, 0.85][references.index(c) % 5])
        else:
            out[c], i = cmap(i % 10), i + 1
    return out


def plot_categories(data: dict, path: Path) -> Path:
    from matplotlib.figure import Figure  # a bare Figure renders with Agg: no pyplot, no global backend change

    cols = data["designs"] + data["references"]
    groups = list(data["categories"])
    colors = _colors(cols, data["references"])
    width = 0.8 / len(cols)
    fig = Figure(figsize=(max(6.0, 1.1 * len(groups) * max(1, len(cols) / 3)), 4.2), dpi=110)
    ax = fig.add_subplot()
    x = np.arange(len(groups))
    for i, c in enumerate(cols):
        vals = [100 * (data["categories"][g]["mean"][c] or np.nan) for g in groups]
        ax.bar(x + (i - (len(cols) - 1) / 2) * width, vals, width, label=c, color=colors[c],
               hatch="//" if c in data["references"] else None, edgecolor="white", linewidth=0.5)
    ax.set_xticks(x, [f"{g}\n({len(data['categories'][g]['tasks'])})" for g in groups])
    ax.set_ylabel("mean main score x100")
    ax.set_title("Category average by design (number of tasks)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(fontsize=8, ncols=min(len(cols), 4), loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_differences(data: dict, path: Path) -> Path:
    """Per task: metric(design) - metric(reference) with the bootstrap CI; filled marker = significant after Holm."""
    from matplotlib.figure import Figure

    ref, alpha = data["reference"], data["settings"]["alpha"]
    others = [d for d in data["tested"] if d != ref]
    tasks = list(data["tasks"])
    colors = _colors(data["designs"] + data["references"], data["references"])
    fig = Figure(figsize=(8.0, 1.4 + 0.28 * len(tasks) * max(1.0, len(others) / 2.5)), dpi=110)
    ax = fig.add_subplot()
    step = 0.8 / max(1, len(others))
    for i, d in enumerate(others):
        labelled = False
        for j, t in enumerate(tasks):
            r = oriented(data["paired_tests"], "task", ref, d, t, PairedResult)
            if r is None:
                continue
            y = j + (i - (len(others) - 1) / 2) * step
            sig = significance(r, alpha) != 0
            ax.errorbar(100 * r.diff, y, xerr=[[100 * (r.diff - r.ci_low)], [100 * (r.ci_high - r.diff)]],
                        fmt="o", color=colors[d], mfc=colors[d] if sig else "white", ms=5, capsize=2, lw=1,
                        label=None if labelled else d)
            labelled = True
    types = [data["tasks"][t]["type"] for t in tasks]
    starts = [j for j in range(len(tasks)) if j == 0 or types[j] != types[j - 1]]
    for k, j in enumerate(starts):  # shade every other category
        if k % 2:
            ax.axhspan(j - 0.5, (starts[k + 1] if k + 1 < len(starts) else len(tasks)) - 0.5, color="0.94", zorder=0)
    ax.set_ylim(len(tasks) - 0.5, -0.5)
    ax.axvline(0, color="0.3", lw=0.8)
    ax.set_yticks(range(len(tasks)), [f"{t} ({data['tasks'][t]['type']})" for t in tasks], fontsize=8)
    ax.set_xlabel(f"difference to {ref} (x100), {int(100 * data['settings']['confidence'])}% bootstrap CI; "
                  "filled = significant (Holm)")
    ax.grid(axis="x", alpha=0.3)
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=min(3, len(others)),
                  frameon=False)
    else:
        ax.text(0.5, 0.5, "no per-dataset tests (no per-item scores)", transform=ax.transAxes, ha="center")
    fig.tight_layout()
    fig.savefig(path)
    return path
