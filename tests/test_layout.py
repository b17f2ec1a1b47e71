"""poolattn.experiment.layout: the one spelling of an experiment folder's paths."""
from __future__ import annotations

from pathlib import Path

from poolattn.experiment import ExperimentLayout, pending
from poolattn.report.folder import load_experiment

from synthetic import write_synthetic_experiment


def test_paths_are_the_documented_layout(tmp_path):
    layout = ExperimentLayout(str(tmp_path))
    assert layout.root == tmp_path and layout == ExperimentLayout(tmp_path)
    rel = lambda p: p.relative_to(tmp_path).as_posix()
    assert [rel(p) for p in (layout.config, layout.environment, layout.budget, layout.runs)] == [
        "experiment.yaml", "environment.json", "budget.json", "runs"]
    assert [rel(p) for p in (layout.run("d"), layout.train("d"), layout.final("d"), layout.eval("d"),
                             layout.summary("d"), layout.items("d", "STS12"), layout.timing("d"))] == [
        "runs/d", "runs/d/train", "runs/d/train/final", "runs/d/eval", "runs/d/eval/summary.json",
        "runs/d/eval/STS12.items.json", "runs/d/timing.json"]
    assert [rel(layout.report(ext)) for ext in ("md", "html", "json")] == ["report.md", "report.html", "report.json"]
    assert ExperimentLayout.final_in(Path("x")) == Path("x/train/final")


def test_evaluated_rows_are_the_run_folders_with_a_summary(tmp_path):
    write_synthetic_experiment(tmp_path, designs={"2-eos-causal": (0.0, 1), "1-mean-causal": (1.0, 2)},
                               baseline=("baseline", -1.0, 9))
    layout = ExperimentLayout(tmp_path)
    layout.eval("c-unfinished").mkdir(parents=True)  # evaluation under way: no summary.json yet
    assert layout.evaluated() == ["1-mean-causal", "2-eos-causal", "baseline"]
    assert layout.done("1-mean-causal") and not layout.done("c-unfinished")
    assert sorted(load_experiment(tmp_path).columns) == layout.evaluated()
    layout.summary("1-mean-causal").unlink()
    assert pending(tmp_path) == ["1-mean-causal"]  # the runner's notion of done is the layout's
