import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from poolattn import EmbeddingModel, training
from poolattn.errors import UserError
from poolattn.training import (
    TrainConfig,
    TrainingDiverged,
    apply_overrides,
    contrastive_backward,
    list_checkpoints,
    train,
)

from helpers import assert_same, grads, tiny_config, trainer_and_batch, write_data

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one intra-op thread;
# subprocesses get OMP_NUM_THREADS=1 (ENV) for the same reason


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


# ---- config ---------------------------------------------------------------------------------------------------------
def test_overrides_and_config_validation(tmp_path):
    raw = {"model": {"pooling": "eos"}, "data": [{"path": "a.jsonl"}], "lr": 1e-5}
    out = apply_overrides(raw, ["model.pooling=latent", "lr=2.0e-4", "data.0.weight=2", "lora.r=8",
                                "chunk_size=null"])
    assert out == {"model": {"pooling": "latent"}, "data": [{"path": "a.jsonl", "weight": 2}], "lr": 2e-4,
                   "lora": {"r": 8}, "chunk_size": None}
    assert raw["model"]["pooling"] == "eos"  # a copy
    with pytest.raises(UserError, match="key=value"):  # a usage error (exit 2) naming the --set item
        apply_overrides(raw, ["lr"])
    for bad in ("data.3.weight=1", "lr.x=1", "data.first.weight=1"):
        with pytest.raises(ValueError, match="does not name a config field"):
            apply_overrides(raw, [bad])
    assert apply_overrides({"lora": None}, ["lora.r=8"]) == {"lora": {"r": 8}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = TrainConfig.load(path, ["lr=1e-4", "model.attention=bidirectional"])
    assert cfg.lr == 1e-4 and cfg.model.attention == "bidirectional" and cfg.lora.r == 16
    for bad, match in [(["bacth_size=3"], "bacth_size"), (["model.pooling=cls"], "weighted_mean"),
                       (["model.lora.r=4"], "under `lora:`"), (["full_finetune=true"], "lora: null")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig.load(path, bad)


# ---- GradCache ------------------------------------------------------------------------------------------------------
class Encoder(torch.nn.Module):
    def __init__(self, dropout):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Dropout(dropout), torch.nn.Tanh(),
                                       torch.nn.Linear(32, 16))

    def forward(self, x):
        return self.net(x)


def _run(model, groups, grad_cache, seed):
    from poolattn.training.losses import info_nce

    model.zero_grad()
    torch.manual_seed(seed)
    loss = contrastive_backward(model, groups, lambda reps: info_nce(*reps[:2], reps[2]), grad_cache=grad_cache)
    return loss, grads(model)


def test_grad_cache_equals_plain_backward():
    torch.manual_seed(0)
    x = [torch.randn(12, 8) for _ in range(3)]  # queries, positives, negatives
    chunked = [list(t.split(5)) for t in x]
    whole = [[t] for t in x]
    model = Encoder(dropout=0.0)
    loss_plain, g_plain = _run(model, whole, False, 0)
    loss_cached, g_cached = _run(model, chunked, True, 0)
    assert torch.allclose(loss_plain, loss_cached, atol=1e-6)
    assert_same(g_plain, g_cached, atol=1e-6)

    # With dropout, the cached second forward must replay the first forward's masks (saved RNG state).
    model = Encoder(dropout=0.3)
    loss_plain, g_plain = _run(model, chunked, False, 1)
    loss_cached, g_cached = _run(model, chunked, True, 1)
    assert torch.allclose(loss_plain, loss_cached, atol=1e-6)
    assert_same(g_plain, g_cached, atol=1e-6)
    _, g_other = _run(model, chunked, True, 2)
    assert max((g_other[k] - g_plain[k]).abs().max() for k in g_plain) > 1e-3  # dropout is really active


def test_grad_cache_on_tiny_embedding_model(tiny_llama, tmp_path):
    """LoRA (dropout 0) + latent pooler: the GradCache step gives the plain step's loss and gradients."""
    t, batch = trainer_and_batch(tiny_config(tiny_llama, tmp_path, **{"lora.dropout": 0.0}))
    assert any(e.negative for e in batch) or True
    loss_plain, *_ = t.backward_step(batch)
    g_plain = grads(t.unwrapped)
    t.optimizer.zero_grad()
    t.config = t.config.model_copy(update={"chunk_size": 3})
    loss_cached, n_texts, n_tokens = t.backward_step(batch)
    assert torch.allclose(loss_plain, loss_cached, atol=1e-5)
    assert_same(g_plain, grads(t.unwrapped), atol=1e-5)
    assert any("lora_B" in k for k in g_plain) and any(k.startswith("pooler.") for k in g_plain)
    assert n_texts >= 16 and n_tokens > n_texts


def _spy_info_nce(monkeypatch) -> list[dict]:
    """Record the arguments the trainer's loss passes to info_nce."""
    from poolattn.training import trainer
    from poolattn.training.losses import info_nce

    calls = []

    def spy(query, positive, negative=None, negative_mask=None, **kw):
        calls.append(dict(query=query.detach(), positive=positive.detach(), negative=negative, **kw))
        return info_nce(query, positive, negative, negative_mask, **kw)
    monkeypatch.setattr(trainer, "info_nce", spy)
    return calls


def test_training_levers_default_to_the_paper_loss():
    cfg = TrainConfig()
    assert cfg.hard_negatives is True and cfg.both_directions is False


def test_hard_negatives_off_encodes_no_negative_and_scores_pairs_only(tiny_llama, tmp_path, monkeypatch):
    from poolattn.training.losses import info_nce

    t, batch = trainer_and_batch(tiny_config(tiny_llama, tmp_path, **{"lora.dropout": 0.0}))
    while sum(e.negative is not None for e in batch) < 2:  # a batch of the source with hard negatives
        batch = t.sampler.next_batch().examples
    loss_on, texts_on, _ = t.backward_step(batch)
    t.config = t.config.model_copy(update={"hard_negatives": False})
    m, seen = t.unwrapped, []
    real_tokenize = m.tokenize
    m.tokenize = lambda texts, instruction=None, *a: seen.extend(texts) or real_tokenize(texts, instruction, *a)
    calls = _spy_info_nce(monkeypatch)
    for chunk in (None, 3):  # plain and GradCache
        t.config = t.config.model_copy(update={"chunk_size": chunk})
        t.optimizer.zero_grad()
        seen.clear()
        loss_off, texts_off, _ = t.backward_step(batch)
        assert texts_off == 2 * len(batch) < texts_on
        assert sorted(seen) == sorted([e.query for e in batch] + [e.positive for e in batch])
        call = calls[-1]
        assert call["negative"] is None
        assert torch.allclose(loss_off, info_nce(call["query"], call["positive"], scale=t.config.scale), atol=1e-6)
        assert abs(float(loss_off) - float(loss_on)) > 1e-4  # the hard negatives did count when on
        if chunk is None:
            loss_plain, g_plain = loss_off, grads(t.unwrapped)
    assert torch.allclose(loss_plain, loss_off, atol=1e-5)
    assert_same(g_plain, grads(t.unwrapped), atol=1e-5)


def test_both_directions_with_grad_cache_equals_plain(tiny_llama, tmp_path, monkeypatch):
    """Symmetric and non-symmetric rows in one batch: the trainer passes each row's flag, and the GradCache step
    gives the plain step's loss and gradients (the backward term is a change of the loss only)."""
    import dataclasses

    t, batch = trainer_and_batch(tiny_config(tiny_llama, tmp_path, **{"lora.dropout": 0.0}))
    batch = [dataclasses.replace(e, symmetric=i % 3 != 0) for i, e in enumerate(batch)]
    forward_only, *_ = t.backward_step(batch)
    calls = _spy_info_nce(monkeypatch)
    out = {}
    for chunk in (None, 3):
        t.optimizer.zero_grad()
        t.config = t.config.model_copy(update={"both_directions": True, "chunk_size": chunk})
        loss, *_ = t.backward_step(batch)
        out[chunk] = loss, grads(t.unwrapped)
        assert calls[-1]["symmetric"].tolist() == [e.symmetric for e in batch]
    assert torch.allclose(out[None][0], out[3][0], atol=1e-5)
    assert_same(out[None][1], out[3][1], atol=1e-5)
    assert abs(float(out[None][0]) - float(forward_only)) > 1e-4  # the backward term is there


@pytest.mark.parametrize("symmetric", [True, False])
def test_training_texts_get_instructions_as_evaluation_does(tiny_llama, tmp_path, symmetric):
    """A symmetric source's query, positive and negative are tokenised from exactly the strings evaluation builds
    for an STS task with the same instruction; a retrieval-like source instructs only the query."""
    from mteb.types import PromptType

    from poolattn.evaluation.encoders import PoolattnEncoder

    data = write_data(tmp_path / "data")
    for src in data:
        src.update(instruction="Retrieve semantically similar text.", symmetric=symmetric)
    t, batch = trainer_and_batch(tiny_config(tiny_llama, tmp_path, data=data, chunk_size=None))
    m = t.unwrapped
    seen = []
    real_tokenize = m.tokenize
    m.tokenize = lambda texts, instruction=None, *a: seen.append((texts, instruction)) or real_tokenize(texts,
                                                                                                    instruction, *a)
    t.backward_step(batch)
    (queries, q_ins), (positives, p_ins) = seen[0], seen[1]
    assert queries == [e.query for e in batch] and positives == [e.positive for e in batch]

    import mteb
    task = mteb.get_task("STSBenchmark")
    enc = PoolattnEncoder(m)
    eval_query_ins = enc.instruction(task.metadata, PromptType.query)
    assert eval_query_ins == "Retrieve semantically similar text."
    eval_strings = m.format(queries, eval_query_ins)
    assert m.format(queries, q_ins) == eval_strings
    assert m.format(positives, p_ins) == (m.format(positives, eval_query_ins) if symmetric else positives)
    evaluated = m.tokenize(positives, eval_query_ins if symmetric else None)
    trained = real_tokenize(positives, p_ins)
    assert torch.equal(evaluated["input_ids"], trained["input_ids"])


def test_passage_max_length_truncates_documents_only(tiny_llama, tmp_path):
    """passage_max_length cuts positives and hard negatives; queries keep max_length."""
    t, batch = trainer_and_batch(tiny_config(tiny_llama, tmp_path, chunk_size=None, max_length=4,
                                             passage_max_length=7))
    m = t.unwrapped
    widths = []
    real_tokenize = m.tokenize
    m.tokenize = lambda *a, **k: (lambda enc: widths.append(enc["input_ids"].shape[1]) or enc)(real_tokenize(*a, **k))
    t.backward_step(batch)
    assert widths[0] == 4 and widths[1] == 7 and widths[2] == 7  # queries, positives, negatives (all long enough)
    assert t.config.max_length == 4 and m.config.max_length == 4


def test_training_warns_about_truncation_once_not_per_batch(tiny_llama, tmp_path, caplog):
    """Every batch of this run truncates (max_length 4): one warning for the run, then none after it."""
    with caplog.at_level(logging.WARNING, logger="poolattn.tokenization"):
        train(tiny_config(tiny_llama, tmp_path, max_steps=3, max_length=4))
        msgs = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
        assert len(msgs) == 1 and "logs this once" in msgs[0], msgs
        m = EmbeddingModel.from_pretrained(tmp_path / "run" / "final")
        m.encode(["word " * 50])  # outside training: warned again
    assert sum("truncated" in r.getMessage() for r in caplog.records) == 2


def test_lora_dropout_replayed_and_checkpointing_keeps_gradients(tiny_llama, tmp_path):
    cfg = tiny_config(tiny_llama, tmp_path, chunk_size=3)  # LoRA dropout 0.1
    t, batch = trainer_and_batch(cfg)

    def step(grad_cache, seed):
        t.optimizer.zero_grad()
        torch.manual_seed(seed)
        loss, *_ = t.backward_step(batch, grad_cache=grad_cache)
        return loss, grads(t.unwrapped)

    loss_plain, g_plain = step(False, 0)  # plain backward over the same chunks
    loss_cached, g_cached = step(True, 0)
    assert torch.allclose(loss_plain, loss_cached, atol=1e-5)
    assert_same(g_plain, g_cached, atol=1e-5)
    g_other = step(True, 1)[1]  # LoRA dropout is active (on lora_B's gradient: B starts at zero)
    assert max((g_other[k] - g_cached[k]).abs().max() for k in g_cached if "lora_B" in k) > 1e-4

    # Gradient checkpointing (on by default) changes nothing, including under peft and dropout.
    t2, _ = trainer_and_batch(cfg.model_copy(update={"gradient_checkpointing": False, "output_dir": str(tmp_path / "r2")}))
    layer = t.unwrapped.backbone.get_base_model().layers[0]
    assert layer.gradient_checkpointing and layer.training  # transformers checkpoints only in train mode
    t2.optimizer.zero_grad()
    torch.manual_seed(0)
    t2.backward_step(batch, grad_cache=True)
    assert_same(g_cached, grads(t2.unwrapped), atol=1e-5)


# ---- runs -------------------------------------------------------------------------------------------------------------
def test_train_writes_run_folder_and_loadable_model(tiny_llama, tmp_path):
    cfg = tiny_config(tiny_llama, tmp_path, chunk_size=4, max_steps=8, save_every=3, keep_last=2, max_length=16)
    final = train(cfg)
    out = Path(cfg.output_dir)
    assert final == out / "final"
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 9))
    assert {"loss", "lr", "seqs_per_s", "tokens_per_s", "grad_norm", "source"} <= metrics[0].keys()
    assert metrics[1]["lr"] == pytest.approx(1e-3) and metrics[-1]["lr"] < metrics[1]["lr"]  # warmup, decay
    assert sum(m["loss"] for m in metrics[-3:]) < sum(m["loss"] for m in metrics[:3])
    assert [p.name for p in list_checkpoints(out)] == ["step-000006", "step-000008"]  # last 2 kept
    assert TrainConfig.model_validate(yaml.safe_load((out / "config.yaml").read_text())) == cfg
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 8

    model = EmbeddingModel.from_pretrained(final)
    assert model.config.max_length == 32 and model.config.lora is not None  # model's max_length, not training's
    saved = load_file(str(out / "checkpoints" / "step-000008" / "trainable.safetensors"))
    assert_same(saved, model.trainable_state_dict(), atol=0)
    assert model.encode(["a man is playing a guitar"]).shape == (1, 64)

    before = (out / "metrics.jsonl").read_text()
    assert train(cfg) == final and (out / "metrics.jsonl").read_text() == before  # done: returns at once
    with pytest.raises(ValueError, match="lr differ"):
        train(cfg.model_copy(update={"lr": 5e-4}))


KILL_SCRIPT = """
import os, signal, sys
from poolattn import training
from poolattn.training import checkpoint
cfg = training.TrainConfig.model_validate_json(open(sys.argv[1]).read())
commit = checkpoint.commit
def kill_mid_save(tmp, final):  # every file of step 4's checkpoint written, not yet renamed
    if final.name == "step-000004":
        os.kill(os.getpid(), signal.SIGKILL)
    commit(tmp, final)
checkpoint.commit = kill_mid_save
training.train(cfg)
"""


def test_sigkill_and_resume_gives_identical_weights(tiny_llama, tmp_path):
    """GradCache + LoRA dropout 0.1, killed while writing the step-4 checkpoint, resumed from step 2: the final
    weights equal an uninterrupted run's (RNG, optimizer, scheduler and data position all restored)."""
    cfg = tiny_config(tiny_llama, tmp_path, chunk_size=3, max_steps=7, save_every=2)
    reference = EmbeddingModel.from_pretrained(train(cfg.model_copy(update={"output_dir": str(tmp_path / "ref")})))

    (tmp_path / "cfg.json").write_text(cfg.model_dump_json())
    (tmp_path / "kill.py").write_text(KILL_SCRIPT)
    proc = subprocess.run([sys.executable, str(tmp_path / "kill.py"), str(tmp_path / "cfg.json")],
                          capture_output=True, text=True, env=ENV, timeout=300)
    out = Path(cfg.output_dir)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert (out / "checkpoints" / ".tmp-step-000004").exists()
    assert [p.name for p in list_checkpoints(out)] == ["step-000002"] and not (out / "final").exists()

    resumed = EmbeddingModel.from_pretrained(train(cfg))
    ref, got = reference.trainable_state_dict(), resumed.trainable_state_dict()
    diff = max((ref[k] - got[k]).abs().max().item() for k in ref)
    print(f"kill-and-resume max abs weight difference: {diff:.3g}")
    assert diff == 0.0
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 8))  # the lines of the lost steps 3-4 were replaced, not duplicated
    ref_loss = [json.loads(x)["loss"] for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()] == ref_loss


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_llama, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_llama, tmp_path)
    calls = []
    real = training.trainer.info_nce

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(training.trainer, "info_nce", poisoned)
    with pytest.raises(TrainingDiverged, match=r"loss nan .* step 3 .*step-000002"):
        train(cfg)
    out = Path(cfg.output_dir)
    assert [p.name for p in list_checkpoints(out)] == ["step-000002"] and not (out / "final").exists()


def test_time_budget_stops_with_checkpoint_and_final_model(tiny_llama, tmp_path):
    cfg = tiny_config(tiny_llama, tmp_path, max_steps=1000, max_time_minutes=0.02)
    final = train(cfg)
    summary = json.loads((Path(cfg.output_dir) / "train_summary.json").read_text())
    assert summary["status"] == "time_budget" and 1 <= summary["steps"] < 1000
    assert list_checkpoints(cfg.output_dir)[-1].name == f"step-{summary['steps']:06d}"
    assert EmbeddingModel.from_pretrained(final).embedding_dim == 64
    assert train(cfg) == final  # budget spent: nothing more to do


def test_cli_train(tiny_llama, tmp_path):
    from typer.testing import CliRunner

    from poolattn.cli import app

    cfg = tiny_config(tiny_llama, tmp_path)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    res = CliRunner().invoke(app, ["train", str(path), "--set", "max_steps=2", "--set", "model.pooling=mean",
                                       "--set", "model.pooling_kwargs={}"])
    assert res.exit_code == 0, res.output
    saved = json.loads((Path(cfg.output_dir) / "config.json").read_text())
    assert saved["max_steps"] == 2 and saved["model"]["pooling"] == "mean"
    res = CliRunner().invoke(app, ["train", str(path), "--set", "batch_size=0"])
    assert res.exit_code != 0 and "batch_size" in res.output


DIST_SCRIPT = """
import sys, torch
from poolattn.training import TrainConfig, Trainer, train
cfg = TrainConfig.model_validate_json(open(sys.argv[1]).read())
results = {}
for chunk in (None, 3):
    t = Trainer(cfg.model_copy(update={"chunk_size": chunk, "output_dir": cfg.output_dir + f"-step{chunk}"}))
    t.setup()
    batch = t.sampler.next_batch().examples
    loss, *_ = t.backward_step(batch[t.rank * t.local_batch:(t.rank + 1) * t.local_batch])
    results[chunk] = {"loss": t.acc.reduce(loss.detach(), "mean"),
                      "grads": {n: p.grad.clone() for n, p in t.unwrapped.named_parameters() if p.grad is not None}}
final = train(cfg)
if t.main:
    torch.save(results, sys.argv[2])
from poolattn.distributed import exit_process
exit_process(0)  # as a user's torchrun script should end: gloo can abort at exit otherwise (poolattn.distributed)
"""


def test_two_processes_match_one(tiny_llama, tmp_path):
    """torchrun, 2 CPU processes on gloo, each half of the global batch: loss and gradients (plain and
    GradCache) and the weights after a short run equal one process with the whole batch."""
    cfg = tiny_config(tiny_llama, tmp_path, **{"lora.dropout": 0.0, "max_steps": 3})
    (tmp_path / "cfg.json").write_text(cfg.model_dump_json())
    (tmp_path / "dist.py").write_text(DIST_SCRIPT)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(tmp_path / "dist.py"), str(tmp_path / "cfg.json"), str(tmp_path / "dist.pt")],
                          capture_output=True, text=True, timeout=600, env=ENV)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = torch.load(tmp_path / "dist.pt")
    single = cfg.model_copy(update={"output_dir": str(tmp_path / "single")})
    for chunk in (None, 3):
        t, batch = trainer_and_batch(single.model_copy(update={"chunk_size": chunk,
                                                      "output_dir": str(tmp_path / f"single-{chunk}")}))
        loss, *_ = t.backward_step(batch)
        assert torch.allclose(got[chunk]["loss"], loss, atol=1e-5)
        worst = assert_same(got[chunk]["grads"], grads(t.unwrapped), atol=1e-5)
        print(f"2 processes vs 1, chunk_size={chunk}: loss {float(got[chunk]['loss']):.6f} vs {float(loss):.6f}, "
              f"max abs gradient difference {worst:.2g}")
    one = EmbeddingModel.from_pretrained(train(single)).trainable_state_dict()
    two = EmbeddingModel.from_pretrained(Path(cfg.output_dir) / "final").trainable_state_dict()
    print(f"2 processes vs 1 after 3 steps: max abs weight difference {assert_same(one, two, atol=1e-4):.2g}")
    assert json.loads((Path(cfg.output_dir) / "train_summary.json").read_text())["world_size"] == 2


def test_two_processes_train_a_pooler_over_chosen_layers(tiny_llama, tmp_path):
    """A mean over layer 1 only leaves the later layers' LoRA without a gradient; DDP then has to be told to look
    for unused parameters (else its reducer stops the second step). Two gloo processes finish and reach the
    weights one process reaches."""
    cfg = tiny_config(tiny_llama, tmp_path, **{"lora.dropout": 0.0, "max_steps": 2, "model.pooling": "mean",
                                               "model.pooling_kwargs": {"layers": "1..1"}})
    (tmp_path / "cfg.json").write_text(cfg.model_dump_json())
    (tmp_path / "node.py").write_text(NODE_SCRIPT)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(tmp_path / "node.py"), str(tmp_path / "cfg.json")],
                          capture_output=True, text=True, timeout=600, env=ENV)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads((Path(cfg.output_dir) / "train_summary.json").read_text())["world_size"] == 2
    two = EmbeddingModel.from_pretrained(Path(cfg.output_dir) / "final").trainable_state_dict()
    one = EmbeddingModel.from_pretrained(train(cfg.model_copy(update={"output_dir": str(tmp_path / "one")})))
    assert_same(one.trainable_state_dict(), two, atol=1e-4)
    moved = [k for k, v in two.items() if "lora_B" in k and v.abs().max() > 0]
    assert moved and all(".layers.0." in k for k in moved)  # only layer 1's adapter learned anything


NODE_SCRIPT = """
import sys
from poolattn.training import TrainConfig, train
train(TrainConfig.model_validate_json(open(sys.argv[1]).read()))
from poolattn.distributed import exit_process
exit_process(0)
"""


def _two_nodes(tmp_path, cfg_file, port):
    """Two single-process 'nodes' (two torchrun launches, node ranks 0 and 1) in two working directories: a relative
    output_dir then lands on two separate trees, as on nodes without a shared file system."""
    procs = []
    for node in (0, 1):
        cwd = tmp_path / f"node{node}"
        cwd.mkdir(exist_ok=True)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", f"--node_rank={node}",
             "--master_addr=127.0.0.1", f"--master_port={port}", str(tmp_path / "node.py"), str(cfg_file)],
            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV))
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]


@pytest.mark.integration
# slow: on 2 loaded cores node 1's torchrun agent once hung for 10 minutes after both workers had finished (2026-12-07,
# Intel Xeon): four torchrun launches are too fragile for the default run's time; run with -m slow
@pytest.mark.slow
def test_save_on_each_node_resumes_without_shared_storage(tiny_llama, tmp_path):
    """Every node holds whole checkpoints (its own RNG state included) and the final model, and a run extended on
    both nodes resumes from them: the two nodes end with the same weights."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (tmp_path / "node.py").write_text(NODE_SCRIPT)
    cfg = tiny_config(tiny_llama, tmp_path, max_steps=2, schedule="constant", save_on_each_node=True,
                      **{"lora.dropout": 0.0}).model_copy(update={"output_dir": "run"})
    (tmp_path / "cfg.json").write_text(cfg.model_dump_json())
    _two_nodes(tmp_path, tmp_path / "cfg.json", port)
    for node in (0, 1):
        ckpt = tmp_path / f"node{node}" / "run" / "checkpoints" / "step-000002"
        assert (ckpt / "trainable.safetensors").exists() and (ckpt / "optimizer.pt").exists()
        assert (ckpt / f"rng_state_{node}.pt").exists(), sorted(p.name for p in ckpt.iterdir())
        assert (tmp_path / f"node{node}" / "run" / "final" / "poolattn_config.json").exists()
    (tmp_path / "cfg.json").write_text(cfg.model_copy(update={"max_steps": 4}).model_dump_json())
    _two_nodes(tmp_path, tmp_path / "cfg.json", port + 1 if port < 65000 else port - 1)
    finals = []
    for node in (0, 1):
        run = tmp_path / f"node{node}" / "run"
        assert json.loads((run / "train_summary.json").read_text())["steps"] == 4
        steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert steps == [1, 2, 3, 4]  # resumed at 2 (not restarted): one line per step
        finals.append(load_file(str(run / "checkpoints" / "step-000004" / "trainable.safetensors")))
    assert_same(finals[0], finals[1], atol=0)


@pytest.mark.parametrize("mode", ["pooler_only", "full_finetune"])
def test_pooler_only_and_full_finetuning(tiny_llama, tmp_path, mode):
    overrides = {"lora": None, "max_steps": 2, "save_every": 2}
    if mode == "full_finetune":
        overrides["full_finetune"] = True
    cfg = tiny_config(tiny_llama, tmp_path, **overrides)
    model = EmbeddingModel.from_pretrained(train(cfg))
    base = EmbeddingModel(cfg.model)
    changed = [k for k, v in base.backbone.state_dict().items()
               if not torch.equal(v, model.backbone.state_dict()[k])]
    assert model.config.lora is None and model.config.full_finetune == (mode == "full_finetune")
    assert bool(changed) == (mode == "full_finetune")
    assert not torch.equal(base.pooler.latents, model.pooler.latents)
    if mode == "pooler_only":
        with pytest.raises(ValueError, match="nothing to train"):
            train(tiny_config(tiny_llama, tmp_path / "eos", **overrides, **{"model.pooling": "eos",
                                                                              "model.pooling_kwargs": {}}))


def test_resume_accepts_a_run_started_before_a_field_existed_and_refuses_a_changed_one(tiny_llama, tmp_path):
    cfg = tiny_config(tiny_llama, tmp_path, max_steps=2, schedule="constant")
    train(cfg)
    saved = Path(cfg.output_dir) / "config.json"
    old = json.loads(saved.read_text())
    old.pop("save_on_each_node")  # as written by a version without the field
    saved.write_text(json.dumps(old))
    train(cfg.model_copy(update={"max_steps": 3}))  # constant lr: may be extended
    assert json.loads((Path(cfg.output_dir) / "train_summary.json").read_text())["steps"] == 3
    with pytest.raises(ValueError, match="different config .*lr"):
        train(cfg.model_copy(update={"max_steps": 4, "lr": 5e-4}))


def test_mixed_precision_no_unquoted_in_yaml_means_no(tmp_path):
    """YAML reads `mixed_precision: no` (and --set mixed_precision=no) as false; it means "no", not a type error."""
    from poolattn.training import TrainConfig, apply_overrides

    assert TrainConfig.model_validate(yaml.safe_load("mixed_precision: no")).mixed_precision == "no"
    assert TrainConfig.model_validate(apply_overrides({}, ["mixed_precision=no"])).mixed_precision == "no"
    with pytest.raises(ValueError, match="mixed_precision"):
        TrainConfig.model_validate({"mixed_precision": True})  # true is not a precision


# ---- report_to (accelerate's trackers) --------------------------------------------------------------------------------
def _tensorboard_scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_report_to_tensorboard_logs_metrics_jsonl_and_none_writes_nothing(tiny_llama, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install -e '.[dev]')")
    cfg = tiny_config(tiny_llama, tmp_path, max_steps=2, report_to="tensorboard")
    out = Path(cfg.output_dir)
    train(cfg)
    metrics = _metrics(out)
    for key in ("loss", "lr", "grad_norm", "seqs_per_s"):
        logged = _tensorboard_scalars(out / "tensorboard", f"train/{key}")
        assert [s for s, _ in logged] == [1, 2]
        assert [v for _, v in logged] == pytest.approx([m[key] for m in metrics], rel=1e-6)
    plain = tiny_config(tiny_llama, tmp_path / "plain", max_steps=2)
    assert plain.report_to == "none"
    train(plain)
    assert (Path(plain.output_dir) / "metrics.jsonl").exists() and not (Path(plain.output_dir) / "tensorboard").exists()


def test_report_to_tensorboard_continues_on_resume(tiny_llama, tmp_path):
    """Interrupted after step 3 (checkpoint at 2): the resumed run logs steps 3 and 4 into the same folder, and
    TensorBoard shows each step once, as metrics.jsonl does."""
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install -e '.[dev]')")
    cfg = tiny_config(tiny_llama, tmp_path, max_steps=4, save_every=2, report_to="tensorboard")

    def stop_after_3(step, record):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[stop_after_3])
    out = Path(cfg.output_dir)
    assert [s for s, _ in _tensorboard_scalars(out / "tensorboard", "train/loss")] == [1, 2, 3]
    train(cfg)
    logged = _tensorboard_scalars(out / "tensorboard", "train/loss")
    assert [s for s, _ in logged] == [1, 2, 3, 4]
    assert [v for _, v in logged] == pytest.approx([m["loss"] for m in _metrics(out)], rel=1e-6)


def test_report_to_names_the_valid_trackers_and_a_missing_package(tiny_llama, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="report_to 'tensorbord'.*valid: none, .*tensorboard.*wandb"):
        TrainConfig(report_to="tensorbord")
    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [])  # as without the package
    cfg = tiny_config(tiny_llama, tmp_path, report_to="wandb")
    with pytest.raises(ValueError, match="report_to wandb: its package is not installed"):
        train(cfg)
    assert not Path(cfg.output_dir).exists()  # refused before anything was written


def test_an_experiment_may_start_reporting_to_tensorboard_on_resume(tmp_path):
    from poolattn.experiment import ExperimentConfig, train_config_for, write_config_once

    cfg = ExperimentConfig(output_dir=str(tmp_path), train={"max_steps": 2})
    write_config_once(tmp_path, cfg)
    reporting = cfg.model_copy(update={"train": {"max_steps": 2, "report_to": "tensorboard"}})
    write_config_once(tmp_path, reporting)  # resumed with curves: allowed
    assert train_config_for(reporting, reporting.designs[0], tmp_path / "d").report_to == "tensorboard"
    with pytest.raises(ValueError, match="train.max_steps changed"):
        write_config_once(tmp_path, cfg.model_copy(update={"train": {"max_steps": 3}}))
