"""Matryoshka representation learning: the loss (against sentence-transformers' MatryoshkaLoss), the trainer's use of
it (hard negatives, GradCache, distillation), the widths a saved model records, and what serve, export and eval do
with them."""
from __future__ import annotations

import json
import logging
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient

from poolattn import EmbeddingModel, ModelConfig
from poolattn.training import TrainConfig, Trainer, train
from poolattn.training.losses import info_nce, matryoshka_loss

from helpers import KEY, TEXTS, grads, tiny_config, trainer_and_batch

WIDTHS = [16, 32, 64]  # tiny models are 64 wide


def _embeddings(seed: int, b: int = 6, d: int = 64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, d, generator=g) for _ in range(3)]


# ---- the loss ------------------------------------------------------------------------------------------------------

def test_loss_is_the_weighted_sum_of_base_losses_on_truncated_renormalised_embeddings():
    q, p, n = _embeddings(0)
    mask = torch.tensor([True, False, True, True, False, True])

    def base(reps):
        return info_nce(reps[0], reps[1], reps[2], mask, scale=20.0)

    weights = [2.0, 0.5, 1.0]
    got = matryoshka_loss(base, WIDTHS, weights)([q, p, n])
    want = sum(w * base([F.normalize(t[:, :d], dim=-1) for t in (q, p, n)]) for d, w in zip(WIDTHS, weights))
    assert torch.allclose(got, want, atol=1e-6)
    assert abs(float(got) - 3.5 * float(base([q, p, n]))) > 1e-2  # the narrow widths change the loss
    # Weights default to 1 each; a width list without its weights' length is refused.
    assert torch.allclose(matryoshka_loss(base, WIDTHS)([q, p, n]),
                          sum(base([t[:, :d] for t in (q, p, n)]) for d in WIDTHS), atol=1e-6)
    with pytest.raises(ValueError, match="2 matryoshka weights for 3 widths"):
        matryoshka_loss(base, WIDTHS, [1.0, 1.0])
    # None (a batch without hard negatives) passes through untouched.
    assert torch.isfinite(matryoshka_loss(lambda r: info_nce(r[0], r[1], r[2]), WIDTHS)([q, p, None]))


def test_loss_equals_sentence_transformers_matryoshka_loss():
    """MatryoshkaLoss(MultipleNegativesRankingLoss(scale=20)) on (anchor, positive, negative) embeddings, widths and
    weights in any order, gives the same value as ours over the same rows (every row with a hard negative)."""
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss, MultipleNegativesRankingLoss

    class Fixed(torch.nn.Module):  # a "model" whose forward returns the embeddings it is handed
        def forward(self, features):
            return {"sentence_embedding": features["emb"]}

        def _get_untruncated_embedding_dimension(self):
            return 64

        def get_embedding_dimension(self):
            return 64

    q, p, n = _embeddings(1)
    model = Fixed()
    st = MatryoshkaLoss(model, MultipleNegativesRankingLoss(model, scale=20.0), [64, 16, 32], [1.0, 2.0, 0.5])
    want = st([{"emb": q}, {"emb": p}, {"emb": n}], None)
    got = matryoshka_loss(lambda r: info_nce(*r, scale=20.0), WIDTHS, [2.0, 0.5, 1.0])([q, p, n])
    assert torch.allclose(got, want, atol=1e-5), (got, want)


def test_config_validates_widths_and_weights(tiny_llama, tmp_path):
    ok = TrainConfig(matryoshka_dims=[16, 32])
    assert ok.matryoshka(64) == ([16, 32, 64], [1.0, 1.0, 1.0])  # the full width is always trained, at weight 1
    listed = TrainConfig(matryoshka_dims=[16, 64], matryoshka_weights=[0.5, 3.0])
    assert listed.matryoshka(64) == ([16, 64], [0.5, 3.0])  # listed last: its own weight
    assert TrainConfig().matryoshka(64) is None
    for bad, words in (({"matryoshka_dims": [32, 16]}, "increasing"), ({"matryoshka_dims": [0, 16]}, "positive"),
                       ({"matryoshka_dims": [16, 32], "matryoshka_weights": [1.0]}, "one positive weight per"),
                       ({"matryoshka_weights": [1.0]}, "one positive weight per"),
                       ({"model": {"matryoshka_dims": [16, 64]}}, "records a trained model's widths")):
        with pytest.raises(ValueError, match=words):
            TrainConfig.model_validate(bad)
    with pytest.raises(ValueError, match="128 is above the model's embedding width 64"):
        Trainer(tiny_config(tiny_llama, tmp_path, matryoshka_dims=[16, 128])).setup()
    assert not (tmp_path / "run" / "config.json").exists()  # refused before the run folder was written


# ---- the trainer ---------------------------------------------------------------------------------------------------

def _spy(monkeypatch, name: str) -> list[dict]:
    """Record the width of each call the trainer makes to its loss function `name`, and what it returned."""
    from poolattn.training import trainer

    real, calls = getattr(trainer, name), []

    def spy(query, *args, **kw):
        out = real(query, *args, **kw)
        calls.append({"width": query.shape[-1], "value": float(out.detach())})
        return out
    monkeypatch.setattr(trainer, name, spy)
    return calls


def test_trainer_step_sums_widths_with_hard_negatives_and_grad_cache(tiny_llama, tmp_path, monkeypatch):
    """A batch with hard negatives: InfoNCE is computed once per width, the step's loss is their weighted sum, and the
    GradCache step (loss per width on the cached embeddings) gives the plain step's loss and gradients."""
    t, batch = trainer_and_batch(tiny_config(tiny_llama, tmp_path, **{"lora.dropout": 0.0},
                                             matryoshka_dims=[16, 32], matryoshka_weights=[2.0, 0.5]))
    while sum(e.negative is not None for e in batch) < 2:
        batch = t.sampler.next_batch().examples
    calls = _spy(monkeypatch, "info_nce")
    out = {}
    for chunk in (None, 3):
        t.config = t.config.model_copy(update={"chunk_size": chunk})
        t.optimizer.zero_grad()
        calls.clear()
        loss, *_ = t.backward_step(batch)
        out[chunk] = loss, grads(t.unwrapped)
        assert [c["width"] for c in calls] == WIDTHS
        assert float(loss) == pytest.approx(sum(w * c["value"] for w, c in zip([2.0, 0.5, 1.0], calls)), abs=1e-5)
    assert torch.allclose(out[None][0], out[3][0], atol=1e-5)
    worst = max((out[None][1][k] - out[3][1][k]).abs().max().item() for k in out[None][1])
    assert out[None][1].keys() == out[3][1].keys() and worst <= 1e-5


def test_trainer_step_with_distillation_computes_both_terms_per_width(tiny_llama, tmp_path, monkeypatch):
    """Distillation is part of the loss summed over widths (as MatryoshkaLoss wraps the whole loss): each width gets
    InfoNCE + weight x the distillation term (a stand-in teacher: its width is its own)."""
    from poolattn.training.distill import DistillSettings

    t, batch = trainer_and_batch(tiny_config(tiny_llama, tmp_path, **{"lora.dropout": 0.0}, matryoshka_dims=[16]))

    class Teacher:
        def embed(self, texts):
            return torch.stack([torch.randn(8, generator=torch.Generator().manual_seed(len(x))) for x in texts])
    t.teacher = Teacher()
    t.config = t.config.model_copy(update={"distill": DistillSettings(weight=0.5)})
    nce, dist = _spy(monkeypatch, "info_nce"), _spy(monkeypatch, "distill_loss")
    loss, *_ = t.backward_step(batch)
    assert [c["width"] for c in nce] == [c["width"] for c in dist] == [16, 64]
    assert float(loss) == pytest.approx(sum(a["value"] + 0.5 * b["value"] for a, b in zip(nce, dist)), abs=1e-5)


def test_loss_falls_over_a_few_steps(tiny_llama, tmp_path):
    t, batch = trainer_and_batch(tiny_config(tiny_llama, tmp_path, **{"lora.dropout": 0.0}, matryoshka_dims=[8, 16]))
    losses = []
    for _ in range(5):
        loss, *_ = t.backward_step(batch)
        t.optimizer.step()
        t.scheduler.step()
        t.optimizer.zero_grad()
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 0.1, losses


def test_two_step_run_saves_the_widths_and_a_load_keeps_them(tiny_llama, tmp_path):
    from typer.testing import CliRunner

    from poolattn.cli import app
    from poolattn.errors import UserError

    final = train(tiny_config(tiny_llama, tmp_path, max_steps=2, chunk_size=4, matryoshka_dims=[16, 32]))
    saved = json.loads((final / "poolattn_config.json").read_text())
    assert saved["config"]["matryoshka_dims"] == WIDTHS
    model = EmbeddingModel.from_pretrained(final, device="cpu")
    assert model.config.matryoshka_dims == WIDTHS
    fingerprint = model.fingerprint()
    model.config = model.config.model_copy(update={"matryoshka_dims": None})
    assert model.fingerprint() != fingerprint  # the widths are part of what the model is
    with pytest.raises(UserError, match="matryoshka_dims"):
        EmbeddingModel.from_pretrained(final, device="cpu", matryoshka_dims=[8, 64])
    res = CliRunner().invoke(app, ["info", str(final)])
    assert res.exit_code == 0 and "Matryoshka-trained widths [16, 32, 64]" in res.output


# ---- serve, export -------------------------------------------------------------------------------------------------

def _matryoshka_model(backbone: str) -> EmbeddingModel:
    torch.manual_seed(0)
    model = EmbeddingModel(ModelConfig(backbone=backbone, pooling="mean", dtype="float32", max_length=64,
                                       matryoshka_dims=WIDTHS), device="cpu")
    return model


def test_serve_says_which_widths_are_trained(tiny_llama, served_model, caplog):
    from poolattn.serve import ServeSettings, create_app, log_config

    model = _matryoshka_model(tiny_llama)
    settings = ServeSettings(model_name="tiny", api_key=KEY)
    auth = {"authorization": f"Bearer {KEY}"}
    full = model.encode(TEXTS)
    with caplog.at_level(logging.INFO, logger="poolattn.serve"):
        with TestClient(create_app(model, settings)) as client:
            card = client.get("/v1/models", headers=auth).json()["data"][0]
            answers = {d: client.post("/v1/embeddings", headers=auth, json={"model": "tiny", "input": TEXTS,
                                                                             "dimensions": d})
                       for d in (16, 24, 24, None)}
    assert card["dimensions"] == 64 and card["matryoshka_dimensions"] == WIDTHS
    assert answers[16].headers["x-poolattn-dimensions"] == "trained"
    assert answers[24].headers["x-poolattn-dimensions"] == "untrained"
    assert "x-poolattn-dimensions" not in answers[None].headers
    for d in (16, 24):  # both answered: the first d components, renormalised
        got = np.array([e["embedding"] for e in answers[d].json()["data"]])
        cut = full[:, :d] / np.linalg.norm(full[:, :d], axis=1, keepdims=True)
        assert got.shape == (4, d) and np.abs(got - cut).max() < 1e-5
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("poolattn.serve")]
    assert any("Matryoshka-trained widths 16, 32, 64" in m for m in messages), messages
    assert sum("dimensions=24 is not a width" in m for m in messages) == 1  # said once per width, not per request
    # A model without recorded widths: every shorter width is untrained, and /v1/models says so.
    with TestClient(create_app(served_model, settings)) as client:
        card = client.get("/v1/models", headers=auth).json()["data"][0]
        r = client.post("/v1/embeddings", headers=auth, json={"model": "tiny", "input": "hi", "dimensions": 16})
    assert card["matryoshka_dimensions"] is None and r.headers["x-poolattn-dimensions"] == "untrained"
    # `poolattn serve` shows poolattn's server messages with uvicorn's, at its log level
    assert log_config("warning")["loggers"]["poolattn.serve"]["level"] == logging.WARNING


def test_export_states_the_trained_widths(tiny_llama, tmp_path):
    from poolattn.export import export_model

    folder = _matryoshka_model(tiny_llama).save_pretrained(tmp_path / "m")
    export_model(folder, tmp_path / "hf", "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["matryoshka_dimensions"] == WIDTHS
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "Matryoshka-trained: the first 16, 32 or all 64 components" in card and "truncate_dim=16" in card


# ---- eval ----------------------------------------------------------------------------------------------------------

@pytest.fixture
def sts_pack(tmp_path):
    rng = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog cat sat on mat man plays guitar".split()
    root = tmp_path / "pack"
    (root / "mteb/STSBenchmark").mkdir(parents=True)
    rows = [{"sentence1": " ".join(rng.choices(words, k=6)), "sentence2": " ".join(rng.choices(words, k=6)),
             "score": rng.uniform(0, 5)} for _ in range(30)]
    (root / "mteb/STSBenchmark/test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "tasks.json").write_text(json.dumps({"tasks": {"STSBenchmark": {
        "type": "STS", "path": "mteb/STSBenchmark", "splits": {"test": "test.jsonl"}}}}))
    return root


def test_eval_at_a_width_scores_cut_unit_vectors_from_the_full_cache(tiny_llama, sts_pack, tmp_path, monkeypatch):
    import mteb
    from datasets import Dataset
    from torch.utils.data import DataLoader
    from typer.testing import CliRunner

    from poolattn.cli import app
    from poolattn.evaluation import EncodeRunner, mteb_encoder

    monkeypatch.setenv("POOLATTN_CACHE", str(tmp_path / "cache"))
    model = _matryoshka_model(tiny_llama)
    loader = DataLoader(Dataset.from_dict({"text": TEXTS}), batch_size=2,
                        collate_fn=lambda rows: {"text": [r["text"] for r in rows]})
    meta = mteb.get_task("STSBenchmark").metadata

    def run(dimensions):
        enc, key = mteb_encoder(model)
        runner = EncodeRunner(enc, tmp_path / "runner-cache", key, dimensions=dimensions)
        out = runner.encode(loader, task_metadata=meta, hf_split="test", hf_subset="default")
        runner.close()
        return out, runner.encoded

    cut, encoded = run(16)
    assert cut.shape == (4, 16) and encoded == 4
    np.testing.assert_allclose(np.linalg.norm(cut, axis=1), 1.0, atol=1e-6)
    full, encoded = run(None)  # the cache held the full vectors: served, not encoded again
    assert full.shape == (4, 64) and encoded == 0
    np.testing.assert_allclose(cut, full[:, :16] / np.linalg.norm(full[:, :16], axis=1, keepdims=True), atol=1e-6)

    folder = model.save_pretrained(tmp_path / "m")
    runner = CliRunner()
    for d, trained in ((32, True), (24, False)):
        res = runner.invoke(app, ["eval", "--model", str(folder), "--tasks", "STSBenchmark", "--data", str(sts_pack),
                                  "--output", str(tmp_path / f"d{d}"), "--dimensions", str(d)])
        assert res.exit_code == 0, res.output
        summary = json.loads((tmp_path / f"d{d}" / "summary.json").read_text())
        assert summary["dimensions"] == d and summary["trained_width"] is trained
        assert f"cut to {d} dimensions" in (tmp_path / f"d{d}" / "summary.md").read_text()
    scores = {d: json.loads((tmp_path / f"d{d}" / "summary.json").read_text())["tasks"][0]["main_score"]
              for d in (32, 24)}
    assert scores[32] != scores[24]  # each width scored on its own vectors, not one another's progress
    res = runner.invoke(app, ["eval", "--model", str(folder), "--tasks", "STSBenchmark", "--data", str(sts_pack),
                              "--output", str(tmp_path / "d65"), "--dimensions", "65"])
    assert res.exit_code != 0 and "between 1 and the model's embedding width 64" in res.output
    # A sentence-transformers model: the widths its config.json declares (vLLM's key, as poolattn's exports write)
    from poolattn.evaluation.runner import _trained

    declared = SimpleNamespace(config=SimpleNamespace(matryoshka_dimensions=[16, 64]))
    assert (_trained(declared, 16), _trained(declared, 24), _trained(SimpleNamespace(), 16)) == (True, False, None)


def test_experiment_evaluates_each_width_into_its_own_folder(monkeypatch, tmp_path):
    from poolattn import evaluation, experiment

    calls = []
    monkeypatch.setattr(evaluation, "evaluate", lambda *a, **k: calls.append((k["output_dir"], k["dimensions"])))
    config = experiment.ExperimentConfig.model_validate({"eval": {"dimensions": [16, 32, 128]}})
    experiment.evaluate_design(SimpleNamespace(embedding_dim=64), config, tmp_path / "eval")
    # the widths first, the full width last (its summary.json marks the row done); 128 > 64 is skipped
    assert calls == [(tmp_path / "eval-d16", 16), (tmp_path / "eval-d32", 32), (tmp_path / "eval", None)]
    with pytest.raises(ValueError, match="increasing"):
        experiment.ExperimentConfig.model_validate({"eval": {"dimensions": [32, 16]}})
    with pytest.raises(ValueError, match="train.matryoshka_dims"):
        experiment.ExperimentConfig.model_validate({"base": {"matryoshka_dims": [16, 64]}})
