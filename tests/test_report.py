import base64
import json
import re

import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from poolattn.allocator import in_use
from poolattn.cli import app
from poolattn.environment import collect_environment
from poolattn.evaluation.items import load_items
from poolattn.report import load_experiment, write_report

from synthetic import write_synthetic_experiment

A, B, COPY = "1-eos-causal", "4-latent-bidirectional", "1-eos-causal-copy"  # B is clearly better; COPY == A


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = write_synthetic_experiment(tmp_path_factory.mktemp("exp") / "experiment")
    paths = write_report(folder, progress=False)
    return folder, paths, json.loads(paths["json"].read_text()), paths["md"].read_text()


def test_report_files_and_tables(report):
    folder, paths, data, md = report
    for name in ["report.md", "report.html", "report.json", "category_scores.png", "task_differences.png"]:
        assert (folder / name).stat().st_size > 500, name
        assert paths and (folder / name) in paths.values()
    for png in ["category_scores.png", "task_differences.png"]:
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for section in ["## Scores per task", "## Category averages", f"## Differences against {A}",
                    "## Wilcoxon signed-rank test across datasets", "## Win / tie / loss", "## Configuration",
                    "## Environment"]:
        assert section in md
    header = next(line for line in md.splitlines() if line.startswith("| task | type |"))
    assert header == f"| task | type | {A} | {B} | {COPY} | baseline (untrained) |"
    sts1 = next(line for line in md.splitlines() if line.startswith("| STS1 |")).split(" | ")
    assert sts1[3].startswith("**") and sts1[3].endswith("▲**")  # B: best in row and better than the reference
    assert "▲" not in sts1[4] and "▼" not in sts1[4]  # COPY: identical to the reference
    assert "synthetic CPU" in md and "n_resamples: 200" in md  # environment and config
    assert data["settings"]["n_resamples"] == 200 and data["reference"] == A  # from experiment.yaml's report:


def test_significance_in_report(report):
    _, _, data, md = report
    n_tasks = len(data["tasks"])
    assert data["win_tie_loss"][B][A] == [n_tasks, 0, 0] and data["win_tie_loss"][A][B] == [0, 0, n_tasks]
    assert data["win_tie_loss"][COPY][A] == [0, n_tasks, 0]
    wil = {(w["a"], w["b"], w["category"]): w for w in data["wilcoxon"]}
    assert wil[A, B, "STS"]["p_holm"] < 0.05 and wil[A, B, "STS"]["mean_diff"] > 0
    assert wil[A, COPY, "STS"]["p_value"] is None
    assert not wil[A, B, "Retrieval"]["reachable"]
    assert "cannot reach p<0.05 with n=2 datasets; min achievable p=0.5" in md
    wtl = next(line for line in md.splitlines() if line.startswith(f"| {B} | 14/0/0"))
    assert wtl.count("▲") == 2  # significant over all tasks against both A and COPY
    assert len(data["paired_tests"]) == 3 * n_tasks  # 3 pairs of designs; the baseline is not tested by default


def test_html_is_self_contained(report):
    folder, _, _, _ = report
    page = (folder / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 2 and all(base64.b64decode(i)[:4] == b"\x89PNG" for i in images)
    assert "<style>" in page and not re.search(r'(src|href)="(http|/|\.)', page) and "<link" not in page
    assert "<strong>" in page and "<table" in page


def test_cli_report_with_options(tmp_path):
    folder = write_synthetic_experiment(tmp_path / "exp", designs={A: (0.0, 1), B: (1.0, 2)},
                                        tasks={"STS1": ("STS", 80), "ClusterA": ("Clustering", 10)})
    res = CliRunner().invoke(app, ["report", str(folder), "--reference", B, "--n-resamples", "100",
                                   "--baseline-in-tests", "--output", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["reference"] == B and data["settings"]["n_resamples"] == 100 and "baseline" in data["tested"]
    assert len(data["paired_tests"]) == 3 * 2  # A, B, baseline: 3 pairs x 2 tasks
    assert "## Differences against 4-latent-bidirectional" in (tmp_path / "out" / "report.md").read_text()
    res = CliRunner().invoke(app, ["report", str(folder), "--reference", "nope"])
    assert res.exit_code != 0 and A in res.output


def test_partial_experiment_and_bad_items(tmp_path):
    folder = write_synthetic_experiment(tmp_path / "exp", designs={A: (0.0, 1), B: (1.0, 2)},
                                        tasks={"STS1": ("STS", 50), "RetrievalA": ("Retrieval", 30)})
    (folder / "runs" / B / "eval" / "RetrievalA.items.json").unlink()
    (folder / "runs" / A / "eval" / "STS1.items.json").write_text('{"metric": "spearman", "gold": [1, 2]}')
    cfg = (folder / "experiment.yaml").read_text().replace("designs:\n", "designs:\n- name: 9-not-run\n  pooling: x\n")
    (folder / "experiment.yaml").write_text(cfg)
    exp = load_experiment(folder)
    assert exp.designs == [A, B] and exp.missing == ["9-not-run"] and exp.baseline == "baseline"
    data = json.loads(write_report(folder, progress=False)["json"].read_text())
    notes = "\n".join(data["notes"])
    assert "9-not-run" in notes and "STS1.items.json" in notes and "RetrievalA" in notes
    assert data["paired_tests"] == [] and data["tasks"]["STS1"]["scores"][A] is not None


def test_input_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an experiment folder"):
        load_experiment(tmp_path)
    (tmp_path / "x.items.json").write_text('{"gold": [1]}')
    with pytest.raises(ValueError, match="x.items.json"):
        load_items(tmp_path / "x.items.json")
    folder = write_synthetic_experiment(tmp_path / "exp", designs={A: (0.0, 1)}, tasks={"C": ("Clustering", 10)},
                                        report={"n_resample": 10})
    with pytest.raises(ValidationError, match="n_resample"):
        write_report(folder, progress=False)


def test_collect_environment():
    env = collect_environment()
    assert env["python"].count(".") == 2 and env["cpu_cores"] >= 1 and isinstance(env["gpus"], list)
    assert env["packages"]["numpy"] and env["packages"]["scipy"] and "mteb" in env["packages"]
    assert env["allocator"] == in_use() and env["allocator"] in ("system", "tcmalloc", "jemalloc")
    assert env["cpu_fast_bf16"] == ("avx512_bf16" in open("/proc/cpuinfo").read() or "amx_bf16" in open("/proc/cpuinfo").read())
    json.dumps(env)


def test_load_items_formats(tmp_path):
    path = tmp_path / "t.items.json"
    path.write_text(json.dumps({"metric": "ndcg_at_10", "ids": ["a", "b"], "scores": [0.5, 1.0]}))  # flat
    assert load_items(path).score() == 0.75 and load_items(path).ids == ["a", "b"]
    sts = {"split": "test", "gold": [1, 2, 3, 4], "similarity": [0.1, 0.3, 0.2, 0.4]}
    path.write_text(json.dumps({"type": "STS", "parts": [sts | {"subset": "en"}, sts | {"subset": "de"}]}))
    parts = load_items(path)
    assert len(parts) == 2 and parts[0].metric == "spearman" and parts[0].score() == pytest.approx(0.8)
    clf = {"gold": [0, 1, 1], "predictions": [[0, 1, 0], [0, 0, 0]]}  # no correct_rate: computed from predictions
    path.write_text(json.dumps({"type": "Classification", "parts": [clf]}))
    assert list(load_items(path).scores) == [1.0, 0.5, 0.0]
    rr = {"query_ids": ["q1", "q2"], "ndcg_at_10": [0.2, 0.4], "map_at_1000": [0.1, 0.3]}
    path.write_text(json.dumps({"type": "Reranking", "main_metric": "map_at_1000", "parts": [rr]}))
    assert load_items(path).metric == "map_at_1000" and load_items(path).score() == pytest.approx(0.2)
    path.write_text(json.dumps({"type": "Clustering", "parts": [{"v_measure": {"Level 0": [0.3, 0.5]}}]}))
    assert load_items(path).score() == pytest.approx(0.4)
    path.write_text(json.dumps({"type": "Summarization", "parts": [{}]}))
    with pytest.raises(ValueError, match="t.items.json.*Summarization"):
        load_items(path)


def test_seed_level_answer_leads_the_report(tmp_path):
    """Designs over three paired seeds: B is better at every seed, C equals A in distribution (another noise draw
    per seed). The leading section says B's difference holds across seeds and C's does not; no single-seed note."""
    runs = {f"{A}-s{s}": (0.0, 10 + s) for s in (1, 2, 3)} | {f"{B}-s{s}": (1.0 + 0.02 * s, 20 + s) for s in (1, 2, 3)}
    runs |= {f"C-x-y-s{s}": (0.0, 30 + s) for s in (1, 2, 3)}
    folder = write_synthetic_experiment(tmp_path / "exp", designs=runs, baseline=None,
                                        tasks={f"STS{i}": ("STS", 800) for i in range(1, 3)})
    cfg = yaml.safe_load((folder / "experiment.yaml").read_text())
    cfg["designs"] = [{"name": A, "pooling": "eos"}, {"name": B, "pooling": "latent", "attention": "bidirectional"},
                      {"name": "C-x-y", "pooling": "mean"}]
    cfg["seeds"] = [1, 2, 3]
    (folder / "experiment.yaml").write_text(yaml.safe_dump(cfg))
    paths = write_report(folder, progress=False)
    sl = json.loads(paths["json"].read_text())["seed_level"]
    assert sl["n_seeds"] == 3 and sl["level"] == "design" and sl["designs"] == [A, B, "C-x-y"]
    sts = {(r["a"], r["b"]): r for r in sl["categories"] if r["category"] == "STS"}
    assert sts[A, B]["p_holm"] < 0.05 and sts[A, B]["diff"] > 0 and sts[A, B]["seed_sd"] > 0
    assert sts[A, "C-x-y"]["p_holm"] >= 0.05 and sts[A, B]["ci_low"] > 0
    md = paths["md"].read_text()
    lead = md.split("## What holds", 1)[1].split("\n## ", 1)[0]
    assert "One training seed" not in md and "across 3 training seeds" in lead
    assert f"{B} beats {A} by" in lead and "seed SD" in lead and "MDE" in lead
    data = json.loads(paths["json"].read_text())  # single-run tables: seed 1's runs only, never seed against seed
    assert data["per_run_seed"] == 1 and data["tested"] == [f"{A}-s1", f"{B}-s1", "C-x-y-s1"]
    assert {r["a"] for r in data["paired_tests"]} | {r["b"] for r in data["paired_tests"]} == set(data["tested"])
    assert "single trained runs of seed 1 only" in md


def test_single_seed_report_says_so_first(report):
    _, _, data, md = report
    first = md.split("## What holds", 1)[1].strip().splitlines()[0]
    assert "these tests are about these trained models, not about the designs" in first
    assert data["seed_level"]["level"] == "models"


def test_truncated_widths_table_pools_seeds_and_marks_trained_widths(tmp_path):
    """eval.dimensions: every row's eval-d<N>/summary.json is read; per configured design the category average's
    mean and SD over its seeds at each width, `trained` only where the design's matryoshka_dims has that width."""
    runs = {f"{A}-s{s}": (0.0, 10 + s) for s in (1, 2)} | {f"{B}-s{s}": (1.0, 20 + s) for s in (1, 2)}
    folder = write_synthetic_experiment(tmp_path / "exp", designs=runs, baseline=None,
                                        tasks={"STS1": ("STS", 200), "STS2": ("STS", 200)})
    cfg = yaml.safe_load((folder / "experiment.yaml").read_text())
    cfg["designs"] = [{"name": A, "pooling": "eos"},
                      {"name": B, "pooling": "eos", "train": {"matryoshka_dims": [8, 16]}}]
    cfg["seeds"], cfg["eval"]["dimensions"] = [1, 2], [8]
    (folder / "experiment.yaml").write_text(yaml.safe_dump(cfg))
    cut = {}  # run -> its STS average at width 8 (the full score minus a run-specific loss)
    for k, run in enumerate(runs):
        summary = json.loads((folder / "runs" / run / "eval" / "summary.json").read_text())
        for row in summary["tasks"]:
            row["main_score"] -= 0.01 * (k + 1)
        cut[run] = sum(r["main_score"] for r in summary["tasks"]) / 2
        (folder / "runs" / run / "eval-d8").mkdir()
        (folder / "runs" / run / "eval-d8" / "summary.json").write_text(json.dumps(summary))
        (folder / "runs" / run / "timing.json").write_text(json.dumps({  # the last run resumed on another CPU
            "train_seconds": 60.0 * (k + 1), "eval_seconds": 30.0, "cpu": "CPU B" if k == 3 else "CPU A",
            "cpu_fast_bf16": k != 3, "gpus": [], **({"allocator": "tcmalloc"} if k == 3 else {})}))
    paths = write_report(folder, progress=False)
    w = json.loads(paths["json"].read_text())["widths"]
    assert w["dimensions"] == [8]
    rows = {(r["design"], r["dimensions"]): r for r in w["rows"]}
    assert set(rows) == {(A, 8), (A, None), (B, 8), (B, None)}
    a8 = [cut[f"{A}-s1"], cut[f"{A}-s2"]]
    assert rows[A, 8]["mean"]["STS"] == pytest.approx(sum(a8) / 2) and rows[A, 8]["runs"] == 2
    assert rows[A, 8]["sd"]["STS"] == pytest.approx(abs(a8[0] - a8[1]) / 2 ** 0.5)
    assert rows[B, 8]["trained"] and not rows[A, 8]["trained"] and rows[A, None]["trained"]
    assert rows[A, None]["mean"]["STS"] > rows[A, 8]["mean"]["STS"]
    md = paths["md"].read_text()
    table = md.split("## Truncated widths", 1)[1].split("\n## ", 1)[0]
    assert (f"ran on different machines** (their times compare machines, not designs; `dtype: auto` is bf16 only "
            f"with fast bf16): CPU A, fast bf16: {A}-s1, {A}-s2, {B}-s1; CPU B, no fast bf16 (fp32), tcmalloc malloc: "
            f"{B}-s2.") in md
    seeds = md.split("## Mean over seeds", 1)[1].split("\n## ", 1)[0]  # each design's cost over its seeds
    assert "| training (min) | 1.5 (1.0-2.0) | 3.5 (3.0-4.0) |" in seeds and "| evaluation (min) | 0.5 (0.5-0.5) |" in seeds
    assert f"| {A} | 8 | no | 2 |" in table and f"| {B} | 8 | yes | 2 |" in table and f"| {B} | full | yes | 2 |" in table


def test_training_table_counts_the_adaptation_stage(tmp_path):
    """A design adapted first (MNTP, SimCSE) trains twice: the Training table's time is both stages, the adaptation
    named with its steps and minutes, and the loss column stays contrastive training's."""
    folder = write_synthetic_experiment(tmp_path / "exp", baseline=None)
    train = folder / "runs" / B / "train"
    train.mkdir(parents=True, exist_ok=True)
    rows = [{"stage": "adapt", "objective": "mntp", "step": s, "loss": 6.0, "elapsed_s": 60.0 * s} for s in (1, 2, 3)]
    rows += [{"step": s, "loss": 1.0, "elapsed_s": 10.0 * s} for s in range(1, 6)]
    (train / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (train / "train_summary.json").write_text(json.dumps({"status": "completed", "steps": 5, "max_steps": 5,
                                                          "elapsed_s": 60.0}))
    md = write_report(folder, progress=False)["md"].read_text()
    table = md.split("## Training", 1)[1].split("\n## ", 1)[0]
    assert f"| {B} | 5 / 5 | 1.000 → 1.000 | 4.0 (adapt 3 steps: 3.0) |" in table
