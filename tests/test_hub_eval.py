"""Hub tasks scored as the English leaderboard scores them: English subsets, the leaderboard's split as the main
score (other splits kept), aggregate tasks combined as mteb combines them. mteb's own task objects, filled with small
synthetic rows where the hub would be needed."""
import json
import random

import pytest
from datasets import Dataset, DatasetDict

from poolattn import EmbeddingModel, ModelConfig
from poolattn.evaluation import evaluate, pack
from poolattn.evaluation.pack import hub_task, main_split

WORDS = "the cat dog sat ran on a mat park man guitar plays fox jumps over lazy brown quick".split()


def _text(i: int) -> str:
    return " ".join(WORDS[(i * k) % len(WORDS)] for k in (1, 3, 5, 7))


def test_english_leaderboard_subsets_and_splits():
    assert hub_task("STS17").hf_subsets == ["en-en"]
    assert hub_task("STS22").hf_subsets == ["en"]
    assert hub_task("AmazonCounterfactualClassification").hf_subsets == ["en"]  # not en-ext, as the leaderboard
    assert hub_task("MassiveIntentClassification").hf_subsets == ["en"]
    assert len(hub_task("STS17", languages=None).hf_subsets) > 5  # languages=None: every subset
    assert hub_task("STS22", languages=["deu"]).hf_subsets == ["de"]
    assert main_split(hub_task("AmazonCounterfactualClassification")) == "test"  # evaluated on validation too
    assert main_split(hub_task("MSMARCO")) == "dev"
    with pytest.raises(ValueError, match="no subset in the languages"):
        hub_task("STS17", languages=["xho"])


@pytest.fixture
def tiny_model(tiny_llama):
    return EmbeddingModel(ModelConfig(backbone=tiny_llama, pooling="mean", dtype="float32"), device="cpu")


def _classification_task():
    task = hub_task("AmazonCounterfactualClassification")
    task.n_experiments, task.samples_per_label = 2, 8

    rng = random.Random(0)  # labels unrelated to the texts: the two splits then score differently

    def rows(n, offset):
        return Dataset.from_dict({"text": [_text(i + offset) for i in range(n)],
                                  "label": [rng.randint(0, 1) for _ in range(n)]})
    task.dataset = {"en": DatasetDict(train=rows(40, 0), validation=rows(20, 100), test=rows(24, 200))}
    task.data_loaded = True
    return task


def test_main_score_is_the_test_split_and_validation_is_scored_on_request(tiny_model, tmp_path, monkeypatch):
    def load(spec, languages, all_splits):
        task = _classification_task()
        return task if all_splits else pack.keep_main_split(task)
    monkeypatch.setattr("poolattn.evaluation.runner.load_task", load)
    main = evaluate(tiny_model, ["AmazonCounterfactualClassification"], data_dir=tmp_path / "nopack",
                    output_dir=tmp_path / "main", cache=False, progress=False)["AmazonCounterfactualClassification"]
    assert main.splits == ["test"]  # the leaderboard's split only, by default
    items = json.loads((tmp_path / "main/AmazonCounterfactualClassification.items.json").read_text())
    assert [p["split"] for p in items["parts"]] == ["test"] and items["other_splits"] == []

    score = evaluate(tiny_model, ["AmazonCounterfactualClassification"], data_dir=tmp_path / "nopack",
                     output_dir=tmp_path, cache=False, progress=False,
                     all_splits=True)["AmazonCounterfactualClassification"]
    result = json.loads((tmp_path / "AmazonCounterfactualClassification.json").read_text())
    per_split = {split: rows[0]["main_score"] for split, rows in result["scores"].items()}
    assert set(per_split) == {"validation", "test"} and score.main_split == "test"
    assert score.main_score == pytest.approx(per_split["test"]) == pytest.approx(main.main_score)
    assert per_split["validation"] != per_split["test"]  # the mean of both (the old main score) would differ
    items = json.loads((tmp_path / "AmazonCounterfactualClassification.items.json").read_text())
    assert items["main_split"] == "test" and [p["split"] for p in items["parts"]] == ["test"]
    assert [p["split"] for p in items["other_splits"]] == ["validation"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["tasks"][0]["main_split"] == "test"


def _fill_retrieval(task, n_docs: int = 6):
    ids = [f"d{i}" for i in range(n_docs)]
    docs = [_text(i) for i in range(n_docs)]
    task.dataset = {"default": {"test": {
        "corpus": Dataset.from_dict({"id": ids, "title": [""] * n_docs, "text": docs}),
        "queries": Dataset.from_dict({"id": ["q0", "q1"], "text": [docs[0], docs[3]]}),
        "relevant_docs": {"q0": {"d0": 1}, "q1": {"d3": 1}},
        "top_ranked": None}}}
    task.data_loaded = True


def test_aggregate_task_is_scored_as_mteb_combines_it(tiny_model, tmp_path, monkeypatch):
    aggregate = hub_task("CQADupstackRetrieval")
    for part in aggregate.tasks:
        _fill_retrieval(part)
    monkeypatch.setattr("poolattn.evaluation.runner.load_task", lambda spec, languages, all_splits: aggregate)
    assert pack.encode_cost(aggregate) > 0
    score = evaluate(tiny_model, ["CQADupstackRetrieval"], data_dir=tmp_path / "nopack", output_dir=tmp_path,
                     cache=False, progress=False)["CQADupstackRetrieval"]
    items = json.loads((tmp_path / "CQADupstackRetrieval.items.json").read_text())
    assert len(items["parts"]) == len(aggregate.tasks) == 12
    # mteb's aggregate score is the mean of its tasks' ndcg@10; each identical task's per-query mean is that ndcg
    per_task = [sum(p["ndcg_at_10"]) / len(p["ndcg_at_10"]) for p in items["parts"]]
    assert score.main_score == pytest.approx(sum(per_task) / len(per_task), abs=1e-4)  # mteb rounds to 5 places
    assert score.main_score > 0.5  # a query identical to its document ranks it first


def test_languages_reach_the_evaluation_from_the_cli_and_the_experiment(monkeypatch, tmp_path):
    """`poolattn eval --languages` and the experiment's `eval.languages` choose the subsets (default English)."""
    from typer.testing import CliRunner

    import poolattn.evaluation as evaluation
    from poolattn.cli import app
    from poolattn.experiment import ExperimentConfig, evaluate_design

    seen = []

    def fake(model, tasks, **kw):
        seen.append(kw["languages"])
        (tmp_path / "out").mkdir(exist_ok=True)
        (tmp_path / "out" / "summary.md").write_text("")
        return {}

    monkeypatch.setattr(evaluation, "evaluate", fake)
    monkeypatch.setattr(evaluation, "load_model", lambda *a, **k: None)
    for flag, want in ((None, ["eng"]), ("deu,fra", ["deu", "fra"]), ("all", None)):
        args = ["eval", "-m", "smollm2-135m", "-t", "STS17", "-o", str(tmp_path / "out")]
        result = CliRunner().invoke(app, args + (["--languages", flag] if flag else []))
        assert result.exit_code == 0, result.output
        assert seen[-1] == want
    cfg = ExperimentConfig.model_validate({"eval": {"languages": ["deu"]}})
    evaluate_design(None, cfg, tmp_path / "e")
    assert seen[-1] == ["deu"] and ExperimentConfig().eval.languages == ["eng"]
