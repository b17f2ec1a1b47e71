"""An experiment folder's layout: the one place its paths are spelled (the runner writes them, the report, the study
and benchmarks read them).

    EXPERIMENT/
      experiment.yaml                        the experiment config as run (pinned by the first run: a resumed run
                                             must not change what it computes); `designs` gives the report's column
                                             order, `baseline.name` and `peers` the reference rows, `report:` the
                                             report's settings
      environment.json                       collect_environment() of the machine that ran it
      budget.json                            (optional) what the budget chooser measured and picked
      runs/<design>/train/                   the trainer's run folder (checkpoints, metrics.jsonl,
                                             train_summary.json, final/: the trained model)
      runs/<design>/eval/                    evaluation results: summary.json (poolattn.evaluation.summary),
                                             <task>.json (mteb's), <task>.items.json (per-item scores for the paired
                                             tests: poolattn.evaluation.items)
      runs/<design>/eval-d<N>/               the same at width N (eval.dimensions: vectors cut to N, renormalised)
      runs/<design>/timing.json              the runner's wall time of training and evaluation
      runs/<design>/claim.json               the job that runs the design (`--design`: several jobs on one folder;
                                             poolattn.experiment.runner.claim)
      runs/<baseline>/eval/...               the untrained backbone, same layout: a reference row, not a design
      runs/peer-<slug>/eval/...              a peer model (poolattn.experiment.peers), same layout: a reference row
      report.{md,html,json}, *.png           the report (poolattn.report)

The folder is the unit of resumption: a design (or reference row) whose summary.json exists is done; one with a
checkpoint in train/ resumes from it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..evaluation.items import items_path
from ..evaluation.summary import SUMMARY_FILE


@dataclass(frozen=True)
class ExperimentLayout:
    """The paths of one experiment folder; `name` is a design's or reference row's name (its run folder's).

    Args:
        root: the experiment folder (the config's output_dir).
    """
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / "experiment.yaml"

    @property
    def environment(self) -> Path:
        return self.root / "environment.json"

    @property
    def budget(self) -> Path:
        return self.root / "budget.json"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def report(self, ext: str) -> Path:
        """report.md, report.html or report.json (ext: md, html, json)."""
        return self.root / f"report.{ext}"

    def run(self, name: str) -> Path:
        return self.runs / name

    @staticmethod
    def train_in(run_dir: str | Path) -> Path:
        """The trainer's folder inside a run folder (runs/<name>/, or one outside an experiment: the budget probe's)."""
        return Path(run_dir) / "train"

    @classmethod
    def final_in(cls, run_dir: str | Path) -> Path:
        """The trained model inside a run folder (the trainer writes it last)."""
        return cls.train_in(run_dir) / "final"

    def train(self, name: str) -> Path:
        return self.train_in(self.run(name))

    def final(self, name: str) -> Path:
        return self.final_in(self.run(name))

    def eval(self, name: str) -> Path:
        return self.run(name) / "eval"

    @staticmethod
    def at_width(eval_dir: str | Path, dimensions: int) -> Path:
        """The evaluation at a Matryoshka width beside a full-width one: runs/<name>/eval-d<N>/ beside eval/."""
        eval_dir = Path(eval_dir)
        return eval_dir.with_name(f"{eval_dir.name}-d{dimensions}")

    def summary(self, name: str) -> Path:
        return self.eval(name) / SUMMARY_FILE

    def items(self, name: str, task: str) -> Path:
        return items_path(self.eval(name), task)

    def timing(self, name: str) -> Path:
        return self.run(name) / "timing.json"

    def done(self, name: str) -> bool:
        """Whether the design or reference row is evaluated (its summary.json is written once every task is scored)."""
        return self.summary(name).exists()

    def evaluated(self) -> list[str]:
        """The names of every run folder with results, sorted."""
        return sorted(p.name for p in self.runs.glob("*") if self.done(p.name))
