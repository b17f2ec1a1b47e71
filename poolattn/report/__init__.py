"""Experiment report: reading the folder (folder), the analysis (analysis, seeds: a pure function from results to
a dict), plots (plots), the leading section (findings: what holds) and rendering (render: Markdown, HTML through markdown-it-py).
Written: report.md, report.html, report.json, category_scores.png, task_differences.png."""
from __future__ import annotations

import json
from pathlib import Path

from ..environment import collect_environment
from ..evaluation.items import load_items
from ..experiment.layout import ExperimentLayout
from .analysis import analyse, settings_for
from .folder import Experiment, load_experiment, load_run_items, training_summary
from .plots import plot_categories, plot_differences
from .render import render, to_html

# The public names; collect_environment and load_items are re-exported for callers of the old flat module.
__all__ = ["Experiment", "collect_environment", "load_experiment", "load_items", "write_report"]


def write_report(folder: str | Path, output: str | Path | None = None, progress: bool = True,
                 **overrides) -> dict[str, Path]:
    """Analyse an experiment folder and write report.{md,html,json} and the PNGs (into `output`, default the
    folder). `overrides`: ReportSettings fields (None = keep experiment.yaml's value)."""
    exp = load_experiment(folder)
    items, notes = load_run_items(exp)
    data = analyse(exp, settings_for(exp, **overrides), items, notes, training_summary(exp.folder, exp.columns),
                   progress)
    out = Path(output or folder)
    out.mkdir(parents=True, exist_ok=True)
    plots = {"categories": plot_categories(data, out / "category_scores.png"),
             "differences": plot_differences(data, out / "task_differences.png")}
    markdown = render(data, plots).markdown()
    paths = {ext: ExperimentLayout(out).report(ext) for ext in ("md", "html", "json")} | plots
    paths["md"].write_text(markdown, encoding="utf-8")
    paths["html"].write_text(to_html(markdown, f"Experiment report: {data['experiment']}", out), encoding="utf-8")
    paths["json"].write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")
    return paths
