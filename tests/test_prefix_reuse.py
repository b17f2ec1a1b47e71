"""Shared-prefix reuse (poolattn.prefix): vectors, losses and gradients equal to the plain path on every tiny
architecture; only causal designs take it; and max_length_applies_to: text."""
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from poolattn import EmbeddingModel, ModelConfig, prefix
from poolattn.experiment.designs import MEAN_BASELINES, PAPER_DESIGNS
from poolattn.testing import ARCHS
from poolattn.training import TrainConfig, Trainer

INSTRUCTION = "Retrieve semantically similar text."
TEXTS = ["a man is playing a guitar", "the cat", "what is the capital of france, and why is paris it?", "dogs",
         "two dogs run in the park"]
SMALL = {"num_latents": 8, "num_heads": 4, "head_dim": 16}  # the tang2024 preset, smaller: fast enough for every arch
CAUSAL = [d for d in PAPER_DESIGNS + MEAN_BASELINES if d.attention == "causal"]  # designs 1-3 and mean
BIDIRECTIONAL = [d for d in PAPER_DESIGNS + MEAN_BASELINES if d.attention == "bidirectional"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one intra-op thread


@pytest.fixture
def spy(monkeypatch):
    """Counts the batches that took the shared-prefix path."""
    calls = []
    real = prefix.shared_states

    def counted(*args):
        calls.append(args[5])  # the shared tokens (then the memo)
        return real(*args)
    monkeypatch.setattr(prefix, "shared_states", counted)
    return calls


def _model(backbone, design, **kw):
    kwargs = {**design.pooling_kwargs, **(SMALL if design.pooling in ("latent", "multilayer") else {})}
    return EmbeddingModel(ModelConfig(backbone=backbone, pooling=design.pooling, attention=design.attention,
                                      pooling_kwargs=kwargs, dtype="float32", **kw), device="cpu")


def _both(m, texts=TEXTS, instruction=INSTRUCTION, batch_size=8):
    m.prefix_reuse = True
    reused = m.encode(texts, instruction, batch_size=batch_size)
    m.prefix_reuse = False
    plain = m.encode(texts, instruction, batch_size=batch_size)
    return reused, plain


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("design", CAUSAL, ids=lambda d: d.name)
def test_vectors_equal_with_and_without_reuse(tiny_backbones, arch, design, spy):
    """fp32, an instruction, texts of different lengths (right padding), with and without mask_instruction."""
    for mask_instruction in (False, True):
        m = _model(tiny_backbones[arch], design, mask_instruction=mask_instruction)
        reused, plain = _both(m)
        assert np.abs(reused - plain).max() <= 1e-5
        assert spy and spy[-1] >= prefix.MIN_SHARED_TOKENS  # the shared path really ran
        spy.clear()


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_vectors_equal_with_a_lora_adapter(tiny_backbones, arch, spy):
    m = _model(tiny_backbones[arch], PAPER_DESIGNS[2]).add_lora(r=4, alpha=8, dropout=0.0)
    torch.manual_seed(0)
    with torch.no_grad():  # lora_B starts at zero: give the adapter an effect
        for name, p in m.backbone.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    reused, plain = _both(m)
    assert np.abs(reused - plain).max() <= 1e-5 and spy
    m.prefix_reuse = True
    assert np.abs(m.for_inference().encode(TEXTS, INSTRUCTION, batch_size=8) - plain).max() <= 1e-5


def test_prefix_pass_runs_once_per_encode_call(tiny_llama, monkeypatch):
    """Batches after the first take the kept prefix pass (PrefixMemo), also where a batch's own shared tokens run
    longer than the kept prefix (texts starting alike) or shorter: the vectors stay those of the plain path."""
    m = _model(tiny_llama, PAPER_DESIGNS[0])
    calls = []
    real = prefix.backbone_states
    monkeypatch.setattr(prefix, "backbone_states", lambda *a, **k: calls.append(a[1].shape) or real(*a, **k))
    texts = ["the cat sat on the mat", "the cat sat down", "dogs", "a man is playing a guitar", "two dogs run",
             "what is the capital of france"]  # longest first: the first batch shares "the cat sat" too
    reused, plain = _both(m, texts, batch_size=2)
    assert np.abs(reused - plain).max() <= 1e-5
    heads = [s for s in calls if s[0] == 1]  # prefix passes (batch 1); the rest: 3 batches reused, 3 plain
    assert len(calls) == 3 + 3 + len(heads) and 1 <= len(heads) <= 2  # without the memo: a prefix pass per batch


def test_positions_continue_after_the_prefix(tiny_llama):
    """The equality above depends on the positions: the batch part restarted at 0 gives other vectors."""
    m = _model(tiny_llama, PAPER_DESIGNS[0])
    batch = m.tokenize(TEXTS, INSTRUCTION)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    n = prefix.shared_prefix_length(ids, mask)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        right = prefix.shared_states(m.backbone, ids, mask, positions, False, n)[-1]
        wrong = torch.cat([positions[:, :n], positions[:, n:] - n], 1)
        restarted = prefix.shared_states(m.backbone, ids, mask, wrong, False, n)[-1]
        plain = prefix.backbone_states(m.backbone, ids, mask, positions, False)[-1]
    real = mask.bool()
    assert (right - plain)[real].abs().max() <= 1e-5
    assert (restarted - plain)[real].abs().max() > 1e-2


@pytest.mark.parametrize("design", BIDIRECTIONAL, ids=lambda d: d.name)
def test_bidirectional_designs_never_take_the_shortcut(tiny_llama, design, spy):
    m = _model(tiny_llama, design)
    assert not m._can_reuse_prefix()
    m.encode(TEXTS, INSTRUCTION, batch_size=8)
    assert spy == []


def test_batches_without_a_shared_prefix_run_whole(tiny_llama, spy):
    m = _model(tiny_llama, PAPER_DESIGNS[0])
    m.encode(TEXTS, batch_size=8)  # no instruction: the texts share only BOS, if that
    m.encode(TEXTS, INSTRUCTION, batch_size=1)  # one row per batch
    assert spy == []
    ids = torch.tensor([[1, 5, 6, 7, 8, 9, 2], [1, 5, 6, 7, 8, 9, 2]])
    assert prefix.shared_prefix_length(ids, torch.ones_like(ids)) == 6  # identical rows keep their own EOS
    left = torch.tensor([[0, 1, 5, 6, 7, 8, 2], [1, 5, 6, 7, 8, 9, 2]])
    assert prefix.shared_prefix_length(left, (left != 0).long()) == 0  # left padding of unequal lengths
    assert prefix.shared_prefix_length(ids[:, :4], torch.ones_like(ids[:, :4])) == 0  # 3 shared: below the minimum


def test_reuse_is_not_part_of_the_fingerprint(tiny_llama):
    m = _model(tiny_llama, PAPER_DESIGNS[1])
    before = m.fingerprint()
    m.prefix_reuse = False
    assert m.fingerprint() == before


# ---- training -----------------------------------------------------------------------------------------------------
WORDS = "the quick brown fox jumps over a lazy dog cat sat on mat man is playing guitar two dogs run in park".split()


def _train_config(backbone, tmp_path, pooling="latent", **overrides) -> TrainConfig:
    rng = np.random.default_rng(0)
    (tmp_path / "data").mkdir(exist_ok=True)
    with open(tmp_path / "data" / "sts.jsonl", "w") as f:
        for _ in range(20):
            q = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 9))))
            f.write(json.dumps({"query": q, "positive": q + " " + str(rng.choice(WORDS)),
                                "negative": " ".join(rng.choice(WORDS, size=4))}) + "\n")
    kwargs = {"preset": "tang2024", "tokens": "last", **SMALL} if pooling != "mean" else {}
    return TrainConfig.model_validate(dict(
        model=dict(backbone=backbone, pooling=pooling, pooling_kwargs=kwargs, dtype="float32", max_length=64),
        data=[{"path": str(tmp_path / "data" / "sts.jsonl"), "instruction": INSTRUCTION, "symmetric": True}],
        lora={"r": 4, "alpha": 8, "dropout": 0.0}, batch_size=6, max_steps=2, warmup_steps=0, mixed_precision="no",
        device="cpu", output_dir=str(tmp_path / "run"), progress=False, seed=0, **overrides))


def _first_step(cfg):
    t = Trainer(cfg)
    t.setup()
    with torch.no_grad():  # lora_B starts at zero: give the adapter an effect on the states
        for name, p in t.unwrapped.backbone.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1, generator=torch.Generator().manual_seed(len(name)))
    loss, _, tokens = t.backward_step(t.sampler.next_batch().examples)
    grads = {n: p.grad.clone() for n, p in t.unwrapped.named_parameters() if p.requires_grad and p.grad is not None}
    return loss, grads, tokens


@pytest.mark.parametrize("arch", ARCHS)
def test_first_training_step_equal_with_and_without_reuse(tiny_backbones, tmp_path, arch, spy):
    """Design 2 with LoRA under gradient checkpointing (on by default): the loss and every trainable parameter's
    gradient equal; queries and (symmetric source) positives and negatives share the instruction."""
    cfg = _train_config(tiny_backbones[arch], tmp_path)
    loss, grads, _ = _first_step(cfg.model_copy(update={"output_dir": str(tmp_path / "on")}))
    assert len(spy) == 3  # queries, positives, negatives: each one batch through the shared path
    spy.clear()
    loss_plain, grads_plain, _ = _first_step(cfg.model_copy(update={"prefix_reuse": False,
                                                                   "output_dir": str(tmp_path / "off")}))
    assert spy == []
    assert abs(float(loss) - float(loss_plain)) <= 1e-5
    assert grads.keys() == grads_plain.keys() and any("lora_A" in k for k in grads)
    assert max((grads[k] - grads_plain[k]).abs().max().item() for k in grads) <= 1e-5


def test_training_step_equal_under_grad_cache(tiny_llama, tmp_path, spy):
    cfg = _train_config(tiny_llama, tmp_path, pooling="mean", chunk_size=4, gradient_checkpointing=False)
    loss, grads, _ = _first_step(cfg.model_copy(update={"output_dir": str(tmp_path / "on")}))
    assert spy
    loss_plain, grads_plain, _ = _first_step(cfg.model_copy(update={"prefix_reuse": False,
                                                                   "output_dir": str(tmp_path / "off")}))
    assert abs(float(loss) - float(loss_plain)) <= 1e-5
    assert max((grads[k] - grads_plain[k]).abs().max().item() for k in grads) <= 1e-5


# ---- max_length_applies_to ------------------------------------------------------------------------------------------
def test_max_length_can_count_the_text_only(tiny_llama):
    m = _model(tiny_llama, PAPER_DESIGNS[0], max_length=8, mask_instruction=True)
    long_text = "what is the capital of france and why is it paris"
    whole = m.tokenize([long_text], INSTRUCTION)
    text = m.tokenize([long_text], INSTRUCTION, "text")
    assert whole["input_ids"].shape[1] == 8
    own = int(text["pool_mask"].sum())  # mask_instruction pools the text's tokens and EOS only
    head = text["input_ids"].shape[1] - own  # the instruction's tokens, BOS included
    assert own == 8 and head > 8
    m.config = m.config.model_copy(update={"max_length": 512})
    full = m.tokenize([long_text], INSTRUCTION)["input_ids"][0].tolist()
    assert len(full) > head + 8  # the text was cut: to its first 7 tokens + EOS, the instruction kept whole
    assert text["input_ids"][0].tolist() == full[:head + 7] + [m.tokenizer.eos_token_id]
    with pytest.raises(ValueError, match="'all' or 'text'"):
        m.tokenize([long_text], INSTRUCTION, "instruction")


def test_training_applies_max_length_to_the_text(tiny_llama, tmp_path):
    cfg = _train_config(tiny_llama, tmp_path, pooling="mean", max_length=6)
    _, _, tokens_all = _first_step(cfg.model_copy(update={"output_dir": str(tmp_path / "all")}))
    _, _, tokens_text = _first_step(cfg.model_copy(update={"max_length_applies_to": "text",
                                                           "output_dir": str(tmp_path / "text")}))
    # every text carries the instruction (symmetric source): `all` cuts each to 6 tokens in total, `text` keeps its
    # instruction (some 40 tokens of the tiny tokenizer) whole on top of up to 6 tokens of its own
    assert tokens_all == 6 * 3 * 6 and tokens_text > tokens_all + 3 * 6 * 10


# ---- switches -----------------------------------------------------------------------------------------------------
def test_cli_no_prefix_reuse(tiny_llama, tmp_path, spy):
    from poolattn.cli import app

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    runner, out = CliRunner(), {}
    for flag in ("--prefix-reuse", "--no-prefix-reuse"):
        spy.clear()
        res = runner.invoke(app, ["encode", "--model", tiny_llama, "--dtype", "float32", "--device", "cpu",
                                  "--instruction", INSTRUCTION, "--input", str(texts), "--output",
                                  str(tmp_path / f"{flag}.npy"), flag])
        assert res.exit_code == 0, res.output
        out[flag] = (np.load(tmp_path / f"{flag}.npy"), len(spy))
    assert out["--prefix-reuse"][1] == 1 and out["--no-prefix-reuse"][1] == 0
    assert np.abs(out["--prefix-reuse"][0] - out["--no-prefix-reuse"][0]).max() <= 1e-5


def test_experiment_switch_reaches_training_and_may_change_on_resume(tmp_path):
    from poolattn.experiment import ExperimentConfig, train_config_for, write_config_once

    config = ExperimentConfig(output_dir=str(tmp_path), prefix_reuse=False)
    assert train_config_for(config, config.designs[0], tmp_path / "runs" / "x").prefix_reuse is False
    assert train_config_for(config.model_copy(update={"prefix_reuse": True}), config.designs[0],
                            tmp_path).prefix_reuse is True
    write_config_once(tmp_path, config)
    write_config_once(tmp_path, config.model_copy(update={"prefix_reuse": True}))  # no error: speed, not results
