from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from poolattn.evaluation import (
    INSTRUCTIONS,
    LITE,
    TASK_CATEGORY,
    TaskUnavailable,
    evaluate,
    instruction_for,
    load_model,
    load_task,
    resolve_tasks,
    task_spec,
)

WORDS = ("the quick brown fox jumps over lazy dog a man is playing guitar two dogs run in park what capital of france "
         "paris cat sat on mat woman slicing onion how do i reset my password").split()


def _sentence(rng: random.Random, n: int = 6) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def tiny_pack(tmp_path_factory) -> Path:
    """A data pack in the shared layout with one small task of every supported type, scored by real mteb tasks."""
    root = tmp_path_factory.mktemp("pack")
    rng = random.Random(0)
    tasks = {}
    _write(root / "mteb/STSBenchmark/test.jsonl",
           [{"sentence1": _sentence(rng), "sentence2": _sentence(rng), "score": rng.uniform(0, 5)} for _ in range(40)])
    tasks["STSBenchmark"] = {"type": "STS", "path": "mteb/STSBenchmark", "splits": {"test": "test.jsonl"}}
    labels = ["card", "cash", "fee"]
    for split, n in (("train", 60), ("test", 30)):
        _write(root / f"mteb/Banking77Classification/{split}.jsonl",
               [{"text": _sentence(rng), "label": labels[i % 3]} for i in range(n)])
    tasks["Banking77Classification"] = {"type": "Classification", "path": "mteb/Banking77Classification",
                                        "splits": {"test": "test.jsonl", "train": "train.jsonl"}}
    _write(root / "mteb/TwentyNewsgroupsClustering/test.jsonl",
           [{"text": _sentence(rng), "label": f"g{i % 4}"} for i in range(200)])
    tasks["TwentyNewsgroupsClustering"] = {"type": "Clustering", "path": "mteb/TwentyNewsgroupsClustering",
                                           "splits": {"test": "test.jsonl"}}
    _write(root / "mteb/TwitterURLCorpus/test.jsonl",
           [{"sentence1": _sentence(rng), "sentence2": _sentence(rng), "label": i % 2} for i in range(40)])
    tasks["TwitterURLCorpus"] = {"type": "PairClassification", "path": "mteb/TwitterURLCorpus",
                                 "splits": {"test": "test.jsonl"}}
    for name in ("SciFact", "SciFactNano"):
        d = root / f"mteb/{name}"
        _write(d / "corpus.jsonl", [{"_id": f"d{i}", "title": f"title {i}", "text": _sentence(rng, 12)}
                                    for i in range(30)])
        _write(d / "queries.jsonl", [{"_id": f"q{i}", "text": _sentence(rng)} for i in range(12)])
        (d / "qrels").mkdir()
        (d / "qrels/test.tsv").write_text("query-id\tcorpus-id\tscore\n" +
                                          "".join(f"q{i}\td{3 * i}\t1\n" for i in range(10)))
        tasks[name] = {"type": "Retrieval", "path": f"mteb/{name}", "mteb_task": "SciFact",
                       "splits": {"test": {"corpus": "corpus.jsonl", "queries": "queries.jsonl",
                                           "qrels": "qrels/test.tsv"}}}
    _write(root / "mteb/SciDocsRR/test.jsonl",
           [{"query": _sentence(rng), "positive": [_sentence(rng)], "negative": [_sentence(rng) for _ in range(4)]}
            for _ in range(8)])
    tasks["SciDocsRR"] = {"type": "Reranking", "path": "mteb/SciDocsRR", "splits": {"test": "test.jsonl"}}
    (root / "tasks.json").write_text(json.dumps({"tasks": tasks}))
    return root


@pytest.fixture(scope="module")
def tiny_model(tiny_backbones):
    from poolattn import EmbeddingModel, ModelConfig

    return EmbeddingModel(ModelConfig(backbone=tiny_backbones["llama"], pooling="mean", dtype="float32"))


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("POOLATTN_CACHE", str(tmp_path / "cache"))


# ---- task names ---------------------------------------------------------------------------------------------------

def test_resolve_suites_categories_and_aliases(tiny_pack):
    assert resolve_tasks("full", tiny_pack) == list(json.loads((tiny_pack / "tasks.json").read_text())["tasks"])
    assert resolve_tasks("retrieval", tiny_pack) == ["SciFact", "SciFactNano"]
    assert resolve_tasks("sts, STSBenchmark,clustering", tiny_pack) == ["STSBenchmark", "TwentyNewsgroupsClustering"]
    assert resolve_tasks(["TwentyNewsgroupsClustering.v2"], tiny_pack) == ["TwentyNewsgroupsClustering"]
    spec = task_spec("TwentyNewsgroupsClustering", tiny_pack)
    assert (spec.mteb_task, spec.source, spec.category) == ("TwentyNewsgroupsClustering.v2", "pack", "clustering")
    assert task_spec("SciFactNano", tiny_pack).mteb_task == "SciFact"
    hub = task_spec("STS16", tiny_pack)
    assert (hub.source, hub.type) == ("hub", "STS")
    assert TASK_CATEGORY["STS16"] == "sts"


def test_unknown_task_lists_the_pack(tiny_pack):
    with pytest.raises(ValueError) as err:
        resolve_tasks("STSBenchmrk", tiny_pack)
    message = str(err.value)
    assert "STSBenchmrk" in message and "SciFactNano" in message and "Banking77Classification" in message
    assert "Did you mean: 'STSBenchmark'" in message


def test_lite_suite_names_pack_tasks(data_dir):
    assert resolve_tasks("lite", data_dir) == list(LITE)
    for name in LITE:
        assert task_spec(name, data_dir).source == "pack"


def test_hub_task_that_cannot_be_reached_says_so(tiny_pack, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TaskUnavailable, match="not in the data pack and could not be loaded from the Hugging Face hub"):
        load_task(task_spec("STS16", tiny_pack))


def test_bad_row_names_file_and_line(tmp_path):
    _write(tmp_path / "mteb/STS12/test.jsonl", [{"sentence1": "a", "sentence2": "b", "score": 1.0}])
    with (tmp_path / "mteb/STS12/test.jsonl").open("a") as f:
        f.write('{"sentence1": "a", "score": 2}\n')
    (tmp_path / "tasks.json").write_text(json.dumps({"tasks": {"STS12": {
        "type": "STS", "path": "mteb/STS12", "splits": {"test": "test.jsonl"}}}}))
    with pytest.raises(ValueError, match=r"test\.jsonl:2: missing field\(s\) \['sentence2'\]"):
        load_task(task_spec("STS12", tmp_path))
    _write(tmp_path / "mteb/STS12/test.jsonl", [{"sentence1": "a", "sentence2": "b", "score": 1.0}] * 2)
    with (tmp_path / "mteb/STS12/test.jsonl").open("a") as f:
        f.write('{"sentence1": "a", \n')  # the shared JSONL reader (poolattn.training.data.iter_jsonl) names the line
    with pytest.raises(ValueError, match=r"test\.jsonl:3: not valid JSON"):
        load_task(task_spec("STS12", tmp_path))


# ---- instructions -------------------------------------------------------------------------------------------------

def test_instruction_table_agrees_with_mteb_prompts():
    import mteb

    checked = 0
    for name, text in INSTRUCTIONS.items():
        prompt = mteb.get_task(name).metadata.prompt
        prompt = prompt.get("query") if isinstance(prompt, dict) else prompt
        if prompt:
            assert prompt == text, name
            checked += 1
    assert checked > 30


def test_instruction_sides_and_overrides(tiny_model):
    import mteb
    from mteb.types import PromptType

    from poolattn.evaluation import PoolattnEncoder

    sts, scifact = mteb.get_task("STS12").metadata, mteb.get_task("SciFact").metadata
    enc = PoolattnEncoder(tiny_model, overrides={"SciFactNano": "nano wording", "STS12": None})
    assert enc.instruction(scifact, PromptType.query) == INSTRUCTIONS["SciFact"]
    assert enc.instruction(scifact, PromptType.document) is None
    enc.aliases["SciFact"] = "SciFactNano"
    assert enc.instruction(scifact, PromptType.query) == "nano wording"
    assert enc.instruction(sts, None) is None  # switched off by the override
    assert instruction_for(["STS13"]) == "Retrieve semantically similar text."


# ---- models -------------------------------------------------------------------------------------------------------

def test_load_model_resolution(tiny_model, tiny_backbones, tmp_path):
    from sentence_transformers import SentenceTransformer

    from poolattn import EmbeddingModel

    assert load_model(tiny_model) is tiny_model
    tiny_model.save_pretrained(tmp_path / "saved")
    assert isinstance(load_model(str(tmp_path / "saved")), EmbeddingModel)
    fresh = load_model(tiny_backbones["qwen2"], pooling="mean", attention="bidirectional")
    assert isinstance(fresh, EmbeddingModel) and fresh.config.name == "mean+bidirectional"
    st = load_model("all-MiniLM-L6-v2")
    assert isinstance(st, SentenceTransformer) and st.poolattn_name == "sentence-transformers/all-MiniLM-L6-v2"
    with pytest.raises(ValueError, match="not to sentence-transformers"):
        load_model("all-MiniLM-L6-v2", pooling="mean")


# ---- end to end on every task type ----------------------------------------------------------------------------------

def test_evaluate_every_type_writes_results_items_and_uses_the_cache(tiny_model, tiny_pack, tmp_path):
    from mteb.results import TaskResult

    out = tmp_path / "out"
    scores = evaluate(tiny_model, "full", data_dir=tiny_pack, output_dir=out, progress=False)
    assert list(scores) == resolve_tasks("full", tiny_pack)
    for name, s in scores.items():
        assert 0.0 <= s.main_score <= 1.0 and s.seconds > 0, name
        result = json.loads((out / f"{name}.json").read_text())
        assert result["task_name"] == (name if name.endswith("Nano") else s.mteb_task)
        if not name.endswith("Nano"):
            assert TaskResult.from_disk(out / f"{name}.json").get_score() == pytest.approx(s.main_score, abs=1e-6)
        items = json.loads((out / f"{name}.items.json").read_text())
        part = items["parts"][0]
        if s.type == "STS":
            assert spearmanr(part["similarity"], part["gold"])[0] == pytest.approx(s.main_score, abs=1e-6)
            assert len(part["gold"]) == 40
        elif s.type == "PairClassification":
            assert len(part["similarity"]) == len(part["gold"]) == 40
        elif s.type == "Classification":
            assert len(part["predictions"]) == 10 and all(len(p) == 30 for p in part["predictions"])
            assert np.mean(part["accuracy_per_experiment"]) == pytest.approx(s.main_score, abs=1e-6)
            assert np.mean(part["correct_rate"]) == pytest.approx(s.main_score, abs=1e-6)
        elif s.type == "Clustering":
            assert np.mean(part["v_measure"]["Level 0"]) == pytest.approx(s.main_score, abs=1e-6)
        elif s.type == "Retrieval":
            assert len(part["query_ids"]) == 10  # queries without relevant documents are dropped, as mteb does
            assert np.mean(part["ndcg_at_10"]) == pytest.approx(s.main_score, abs=1e-5)
        else:  # Reranking: mteb's main score for SciDocsRR is MAP@1000
            assert np.mean(part["map_at_1000"]) == pytest.approx(s.main_score, abs=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert [t["task"] for t in summary["tasks"]] == list(scores)
    assert "| SciFactNano | Retrieval | ndcg_at_10 |" in (out / "summary.md").read_text()
    assert scores["SciFactNano"].instruction == INSTRUCTIONS["SciFact"]

    again = evaluate(tiny_model, "full", data_dir=tiny_pack, progress=False)
    assert all(s.encoded == 0 for s in again.values())
    assert {k: s.main_score for k, s in again.items()} == {k: s.main_score for k, s in scores.items()}
    changed = evaluate(tiny_model, "STSBenchmark", data_dir=tiny_pack, progress=False,
                       instructions={"STSBenchmark": "a different instruction"})
    assert changed["STSBenchmark"].encoded > 0  # the cache is keyed by instruction too


def test_an_interrupted_evaluation_resumes_at_the_first_unfinished_task(tiny_model, tiny_pack, tmp_path,
                                                                        monkeypatch):
    """A run killed after its first task keeps that task (progress.json): the rerun scores only the rest, and
    anything that changes the scores (here an instruction, or a missing items file) makes it score again."""
    from poolattn.evaluation import runner

    out, tasks = tmp_path / "out", "STSBenchmark,TwitterURLCorpus,SciFactNano"
    real, ran, kill = runner._run_one, [], ["TwitterURLCorpus"]

    class Killed(Exception):
        pass

    def run_one(spec, *a, **k):
        ran.append(spec.name)
        if spec.name in kill:
            kill.clear()
            raise Killed  # the process dies during the second task
        return real(spec, *a, **k)
    monkeypatch.setattr(runner, "_run_one", run_one)

    with pytest.raises(Killed):
        evaluate(tiny_model, tasks, data_dir=tiny_pack, output_dir=out, progress=False)
    assert not (out / "summary.json").exists()
    first = json.loads((out / "progress.json").read_text())["tasks"]
    assert list(first) == ["STSBenchmark"]

    ran.clear()
    scores = evaluate(tiny_model, tasks, data_dir=tiny_pack, output_dir=out, progress=False)
    assert ran == ["TwitterURLCorpus", "SciFactNano"]
    assert list(scores) == ["STSBenchmark", "TwitterURLCorpus", "SciFactNano"]
    assert scores["STSBenchmark"].main_score == first["STSBenchmark"]["main_score"]
    summary = json.loads((out / "summary.json").read_text())
    assert [t["task"] for t in summary["tasks"]] == list(scores)

    ran.clear()
    other = "TwentyNewsgroupsClustering"  # not in `tasks`: scored into the same folder in between
    evaluate(tiny_model, other, data_dir=tiny_pack, output_dir=out, progress=False)
    evaluate(tiny_model, tasks, data_dir=tiny_pack, output_dir=out, progress=False)
    assert ran == [other]  # the rest finished with these settings: kept in the record
    (out / "TwitterURLCorpus.items.json").unlink()
    ran.clear()
    evaluate(tiny_model, tasks, data_dir=tiny_pack, output_dir=out, progress=False)
    assert ran == ["TwitterURLCorpus"]  # a task whose files are gone is scored again
    ran.clear()
    evaluate(tiny_model, tasks, data_dir=tiny_pack, output_dir=out, progress=False,
             instructions={"STSBenchmark": "a different instruction"})
    assert ran == ["STSBenchmark", "TwitterURLCorpus", "SciFactNano"]  # other settings: nothing is reused
    ran.clear()
    evaluate(tiny_model, "STSBenchmark", data_dir=tiny_pack, output_dir=out, progress=False,
             instructions={"STSBenchmark": "a different instruction"}, resume=False)
    assert ran == ["STSBenchmark"]


def test_retrieval_plumbing_finds_a_query_that_is_its_document(tiny_model, tmp_path):
    """Ids, qrels and the title+text join line up: a query that reads exactly like its document ranks it first."""
    rng = random.Random(1)
    docs = [{"_id": f"d{i}", "title": f"t{i}", "text": _sentence(rng, 10)} for i in range(25)]
    d = tmp_path / "mteb/SciFact"
    _write(d / "corpus.jsonl", docs)
    _write(d / "queries.jsonl", [{"_id": f"q{i}", "text": f"{docs[3 * i]['title']} {docs[3 * i]['text']}"}
                                 for i in range(8)])
    (d / "qrels").mkdir()
    (d / "qrels/test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{3 * i}\t1\n" for i in range(8)))
    (tmp_path / "tasks.json").write_text(json.dumps({"tasks": {"SciFact": {
        "type": "Retrieval", "path": "mteb/SciFact",
        "splits": {"test": {"corpus": "corpus.jsonl", "queries": "queries.jsonl", "qrels": "qrels/test.tsv"}}}}}))
    scores = evaluate(tiny_model, "SciFact", data_dir=tmp_path, instructions={"SciFact": None}, progress=False)
    assert scores["SciFact"].main_score == pytest.approx(1.0)


def test_cli_eval(tiny_pack, tiny_model, tmp_path):
    from typer.testing import CliRunner

    from poolattn.cli import app

    tiny_model.save_pretrained(tmp_path / "m")
    runner = CliRunner()
    res = runner.invoke(app, ["eval", "--model", str(tmp_path / "m"), "--tasks", "sts,TwitterURLCorpus",
                              "--data", str(tiny_pack), "--output", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o/STSBenchmark.items.json").exists() and (tmp_path / "o/TwitterURLCorpus.json").exists()
    res = runner.invoke(app, ["eval", "--model", str(tmp_path / "m"), "--tasks", "nope",
                              "--data", str(tiny_pack), "--output", str(tmp_path / "o")])
    assert res.exit_code == 2 and "unknown task 'nope'" in res.output


# ---- work evaluation does not repeat: main split only, each distinct text once, the cache's key -------------------

COUNTERFACTUAL = "AmazonCounterfactualClassification"  # a pack-sized task that mteb scores on validation and test


@pytest.fixture(scope="module")
def repeat_pack(tmp_path_factory) -> Path:
    """STSBenchmark whose 40 pairs draw from 12 sentences (repeated across pairs and sides), and
    AmazonCounterfactualClassification (en) with train, validation and test splits of distinct texts (mteb
    evaluates validation and test; the main score is test's, as on the leaderboard)."""
    root = tmp_path_factory.mktemp("repeat")
    rng = random.Random(2)
    pool = [f"{_sentence(rng)} {i}" for i in range(12)]
    _write(root / "mteb/STSBenchmark/test.jsonl",
           [{"sentence1": rng.choice(pool), "sentence2": rng.choice(pool), "score": rng.uniform(0, 5)}
            for _ in range(40)])
    tasks = {"STSBenchmark": {"type": "STS", "path": "mteb/STSBenchmark", "splits": {"test": "test.jsonl"}}}
    n = 0
    for split, size in (("train", 60), ("validation", 20), ("test", 20)):
        _write(root / f"mteb/{COUNTERFACTUAL}/{split}.jsonl",
               [{"text": f"{_sentence(rng)} {n + i}", "label": i % 2} for i in range(size)])
        n += size
    tasks[COUNTERFACTUAL] = {"type": "Classification", "path": f"mteb/{COUNTERFACTUAL}",
                             "splits": {s: f"{s}.jsonl" for s in ("train", "validation", "test")}}
    (root / "tasks.json").write_text(json.dumps({"tasks": tasks}))
    return root


def test_only_the_main_split_is_scored_unless_all_splits(tiny_model, repeat_pack, tmp_path):
    """AmazonCounterfactualClassification: test only by default (recorded in the score, summary and
    progress.json); all_splits scores validation too, is a different setting for resume, and leaves the main
    score as it was."""
    out = tmp_path / "out"
    main = evaluate(tiny_model, COUNTERFACTUAL, data_dir=repeat_pack, output_dir=out, progress=False)
    s = main[COUNTERFACTUAL]
    assert s.main_split == "test" and s.splits == ["test"]
    assert list(json.loads((out / f"{COUNTERFACTUAL}.json").read_text())["scores"]) == ["test"]
    assert json.loads((out / "progress.json").read_text())["settings"]["splits"] == "main"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["splits"] == "main" and summary["tasks"][0]["splits"] == ["test"]

    every = evaluate(tiny_model, COUNTERFACTUAL, data_dir=repeat_pack, output_dir=out, progress=False,
                     all_splits=True)[COUNTERFACTUAL]
    assert sorted(every.splits) == ["test", "validation"]  # scored anew, not read back from progress.json
    assert sorted(json.loads((out / f"{COUNTERFACTUAL}.json").read_text())["scores"]) == ["test", "validation"]
    assert every.main_score == s.main_score
    assert json.loads((out / "progress.json").read_text())["settings"]["splits"] == "all"


def test_each_distinct_text_is_encoded_once_per_task_with_identical_scores(tiny_model, repeat_pack):
    """Without the cache: STS encodes its 12 sentences once (not once per side, or per pair without dedup), and
    classification's training set once for both splits; the scores do not change."""
    tasks, sizes = f"STSBenchmark,{COUNTERFACTUAL}", {"validation": 20, "test": 20}
    on = evaluate(tiny_model, tasks, data_dir=repeat_pack, cache=False, progress=False, all_splits=True)
    off = evaluate(tiny_model, tasks, data_dir=repeat_pack, cache=False, progress=False, all_splits=True, dedup=False)
    assert {k: s.main_score for k, s in on.items()} == {k: s.main_score for k, s in off.items()}
    pairs = [json.loads(x) for x in (repeat_pack / "mteb/STSBenchmark/test.jsonl").read_text().splitlines()]
    assert on["STSBenchmark"].encoded == len({r[k] for r in pairs for k in ("sentence1", "sentence2")})
    assert off["STSBenchmark"].encoded == 80
    train = on[COUNTERFACTUAL].encoded - sum(sizes.values())  # the training texts the classifiers use
    assert train > 0 and off[COUNTERFACTUAL].encoded == 2 * train + sum(sizes.values())


def _loader(texts: list[str]):
    from datasets import Dataset
    from torch.utils.data import DataLoader

    return DataLoader(Dataset.from_dict({"text": texts}), batch_size=4,
                      collate_fn=lambda rows: {"text": [r["text"] for r in rows]})


def _asymmetric_sentence_transformer():
    """A tiny sentence-transformers model that encodes queries and documents through different modules (a Router)
    and has no prompts (sentence-transformers 6 gives new models empty query/document prompts, which mteb reads as
    prompts; a model configured with none has none): only mteb's encode_query / encode_document tell the sides
    apart."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Router, StaticEmbedding

    from poolattn.testing import tiny_tokenizer

    tok = tiny_tokenizer()._tokenizer
    side = [StaticEmbedding(tok, embedding_dim=8) for _ in range(2)]
    model = SentenceTransformer(modules=[Router.for_query_document(query_modules=[side[0]],
                                                                    document_modules=[side[1]])], device="cpu")
    model.prompts = {}
    return model


@pytest.mark.parametrize("kind", ["poolattn", "sentence-transformers"])
def test_the_cache_keeps_a_query_and_a_document_with_the_same_text_apart(kind, tiny_model, tmp_path):
    """mteb issue #5383: the same text as a query (with its instruction, or through the query modules) and as a
    document gets two cached vectors, each what the model gives that side; a second run serves both."""
    import mteb
    from mteb.types import PromptType

    from poolattn.evaluation import EncodeRunner, mteb_encoder

    model = tiny_model if kind == "poolattn" else _asymmetric_sentence_transformer()
    meta, text = mteb.get_task("SciFact").metadata, ["what is the capital of france"]
    if kind == "poolattn":
        want = model.encode(text, instruction=INSTRUCTIONS["SciFact"]), model.encode(text)
    else:
        want = model.encode_query(text), model.encode_document(text)

    def run() -> tuple[np.ndarray, np.ndarray, int]:
        enc, key = mteb_encoder(model)
        runner = EncodeRunner(enc, tmp_path / "cache", key)
        q, d = (runner.encode(_loader(text), task_metadata=meta, hf_split="test", hf_subset="default",
                              prompt_type=side) for side in (PromptType.query, PromptType.document))
        runner.close()
        return q, d, runner.encoded

    q, d, encoded = run()
    assert encoded == 2 and not np.allclose(q, d)
    np.testing.assert_allclose(q, want[0], atol=1e-6)
    np.testing.assert_allclose(d, want[1], atol=1e-6)
    q2, d2, encoded = run()
    assert encoded == 0
    np.testing.assert_array_equal(q2, q)
    np.testing.assert_array_equal(d2, d)


def test_cli_eval_all_splits_and_no_dedup(tiny_model, repeat_pack, tmp_path):
    from typer.testing import CliRunner

    from poolattn.cli import app

    tiny_model.save_pretrained(tmp_path / "m")
    res = CliRunner().invoke(app, ["eval", "--model", str(tmp_path / "m"), "--tasks", COUNTERFACTUAL,
                                   "--data", str(repeat_pack), "--output", str(tmp_path / "o"), "--all-splits",
                                   "--no-dedup", "--no-cache"])
    assert res.exit_code == 0, res.output
    row = json.loads((tmp_path / "o/summary.json").read_text())["tasks"][0]
    assert sorted(row["splits"]) == ["test", "validation"]
    assert (row["encoded"] - 40) % 2 == 0  # without dedup the training texts are encoded once per split


def test_experiment_eval_section_passes_splits_and_dedup(monkeypatch, tmp_path):
    from poolattn import evaluation, experiment

    seen: dict = {}
    monkeypatch.setattr(evaluation, "evaluate", lambda *a, **k: seen.update(k))
    default = experiment.ExperimentConfig()
    assert default.eval.all_splits is False and default.eval.dedup is True
    experiment.evaluate_design("m", experiment.ExperimentConfig.model_validate(
        {"eval": {"all_splits": True, "dedup": False}}), tmp_path)
    assert seen["all_splits"] is True and seen["dedup"] is False


# ---- the real data pack -------------------------------------------------------------------------------------------

@pytest.mark.integration
def test_every_pack_task_loads_with_its_rows(data_dir):
    from poolattn.evaluation import pack_tasks

    for name, entry in pack_tasks(data_dir).items():
        task = load_task(task_spec(name, data_dir))
        root = data_dir / entry["path"]
        if entry["type"] == "Retrieval":
            split = task.dataset["default"]["test"]
            assert len(split["corpus"]) == sum(1 for _ in (root / "corpus.jsonl").open()), name
            assert len(split["queries"]) == len(split["relevant_docs"]), name
        else:
            data = task.dataset
            assert len(data["test"]) == sum(1 for _ in (root / "test.jsonl").open()), name


def _reference(data_dir: Path) -> tuple[dict, dict]:
    published = json.loads((data_dir / "reference/all-MiniLM-L6-v2.json").read_text())["tasks"]
    pack = json.loads((data_dir / "reference/all-MiniLM-L6-v2.pack.json").read_text())
    return published, pack


def _check_fidelity(data_dir: Path, tasks: list[str], tmp_path: Path) -> None:
    published, pack = _reference(data_dir)
    scores = evaluate("all-MiniLM-L6-v2", tasks, data_dir=data_dir, output_dir=tmp_path, cache=False, progress=False)
    for name in tasks:
        ours = scores[name].main_score_x100
        assert ours == pytest.approx(pack[name]["main_score_x100"], abs=0.05), name
        if name in published:  # SciFact/NFCorpus: the README quotes the published score, equal to the pack run's
            assert ours == pytest.approx(100 * published[name]["main_score"], abs=0.05), name


CI_FIDELITY = ["STSBenchmark", "STS12", "STS13", "STS15", "SICK-R", "Banking77Classification", "EmotionClassification"]


@pytest.mark.integration
def test_minilm_reproduces_published_scores(data_dir, tmp_path):
    _check_fidelity(data_dir, CI_FIDELITY, tmp_path)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("task", ["SciFact", "NFCorpus"])
def test_minilm_reproduces_published_retrieval_scores(data_dir, tmp_path, task):
    _check_fidelity(data_dir, [task], tmp_path)


def test_evaluation_counts_truncated_texts_per_task_instead_of_warning_per_batch(tiny_backbones, tiny_pack,
                                                                                tmp_path, caplog):
    """Texts cut at max_length are one number per task (TaskScore.truncated, summary.json), not a warning per
    encoded batch; a model whose max_length fits every text reports 0."""
    import logging

    from poolattn import EmbeddingModel, ModelConfig

    short = EmbeddingModel(ModelConfig(backbone=tiny_backbones["llama"], pooling="mean", dtype="float32",
                                       max_length=4))
    with caplog.at_level(logging.WARNING, logger="poolattn.tokenization"):
        cut = evaluate(short, "STSBenchmark", data_dir=tiny_pack, output_dir=tmp_path / "short", batch_size=8,
                       progress=False, cache=False)["STSBenchmark"]
    assert not [r for r in caplog.records if "truncated" in r.getMessage()]
    assert 0 < cut.truncated <= cut.encoded and cut.encoded > 8  # several batches, each cutting some texts
    row = json.loads((tmp_path / "short" / "summary.json").read_text())["tasks"][0]
    assert row["truncated"] == cut.truncated
    full = EmbeddingModel(ModelConfig(backbone=tiny_backbones["llama"], pooling="mean", dtype="float32"))
    assert evaluate(full, "STSBenchmark", data_dir=tiny_pack, progress=False, cache=False)["STSBenchmark"].truncated == 0
