"""The adaptation stage before contrastive training (poolattn.training.adapt): LLM2Vec's MNTP and unsupervised SimCSE,
its config, its place in the trainer (attention, resume, metrics) and the named design that uses it."""
import json

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from poolattn.attention import get_attention
from poolattn.training import TrainConfig, Trainer
from poolattn.training.adapt import BLANK, Adaptation, AdaptConfig, mntp_collator, mntp_inputs, simcse_loss
from poolattn.training.runfolder import metric_rows

from helpers import assert_same, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one intra-op thread


def _stage_rows(out, stage="adapt"):
    return [r["step"] for r in metric_rows(out, stage)]


def test_mntp_targets_are_the_next_token_of_each_masked_position(tiny_llama):
    from poolattn.backbone import load_tokenizer

    tok = load_tokenizer(tiny_llama)
    assert tok.mask_token is None  # the tiny tokenizer has none: LLM2Vec's blank `_` is used
    gen = torch.Generator().manual_seed(0)
    blocks = torch.randint(3, len(tok), (64, 64), generator=gen)
    blocks[torch.rand(blocks.shape, generator=gen) < 0.1] = tok.eos_token_id  # special: never picked
    collator = mntp_collator(tok, AdaptConfig(mask_probability=0.3))
    mask_id = collator.tokenizer.convert_tokens_to_ids(BLANK)
    inputs, targets = mntp_inputs(blocks, collator, seed=1)
    assert tok.mask_token is None  # the model's own tokenizer is left as it was

    predicted = torch.zeros_like(blocks, dtype=torch.bool)
    predicted[:, 1:] = targets[:, :-1] != -100  # position i is predicted from the logits at i-1
    assert (targets[:, :-1][predicted[:, 1:]] == blocks[:, 1:][predicted[:, 1:]]).all()
    assert (targets[:, -1] == -100).all()  # nothing after the last position
    assert not predicted[blocks == tok.eos_token_id].any()
    changed = inputs != blocks
    assert not changed[:, 1:][~predicted[:, 1:]].any()  # only picked tokens are replaced
    ordinary = (blocks != tok.eos_token_id)[:, 1:]
    assert abs(predicted[:, 1:][ordinary].float().mean().item() - 0.3) < 0.03  # ~ mask_probability
    masked = (inputs[:, 1:] == mask_id)[predicted[:, 1:]].float().mean().item()
    assert abs(masked - 0.8) < 0.05  # transformers' collator: 80% mask token, 10% random, 10% unchanged
    again, _ = mntp_inputs(blocks, collator, seed=1)
    other, _ = mntp_inputs(blocks, collator, seed=2)
    assert torch.equal(again, inputs) and not torch.equal(other, inputs)  # a function of the seed

    full = mntp_collator(tok, AdaptConfig(mask_probability=0.3, data_collator="all_mask"))
    inputs, targets = mntp_inputs(blocks, full, seed=1)
    assert (inputs[:, 1:][targets[:, :-1] != -100] == mask_id).all()
    with pytest.raises(ValueError, match="not one token"):
        mntp_collator(tok, AdaptConfig(mask_token="<no such token>"))


def test_adapt_config_defaults_and_refusals():
    with pytest.raises(ValidationError, match="'mntp' or 'simcse'"):
        TrainConfig(adapt={"objective": "mlm"})
    mntp, simcse = (TrainConfig(adapt={"objective": o}).adapt for o in ("mntp", "simcse"))
    assert (mntp.lr, mntp.batch_size, mntp.max_length) == (5e-5, 16, 128)
    assert (simcse.lr, simcse.batch_size, simcse.max_length) == (3e-5, 32, 128)
    assert AdaptConfig(objective="simcse", lr=1e-3).lr == 1e-3
    with pytest.raises(ValidationError, match="mask_probability do not apply to objective 'simcse'"):
        AdaptConfig(objective="simcse", mask_probability=0.5)
    with pytest.raises(ValidationError, match="dropout do not apply to objective 'mntp'"):
        AdaptConfig(dropout=0.1)
    with pytest.raises(ValidationError, match="give it a `lora:` adapter"):
        TrainConfig(adapt={}, lora=None)
    cfg = TrainConfig(adapt={"objective": "simcse"})
    assert TrainConfig.model_validate(cfg.model_dump(mode="json")) == cfg  # the run folder's config.json reloads


def test_lm_head_is_the_backbones(tiny_backbones):
    from transformers import AutoModelForCausalLM

    from poolattn.backbone import load_backbone, load_lm_head

    llama = tiny_backbones["llama"]  # untied: read from the checkpoint
    head = load_lm_head(llama, load_backbone(llama, "float32", device="cpu"))
    assert torch.equal(head, AutoModelForCausalLM.from_pretrained(llama).lm_head.weight.detach())
    gemma = load_backbone(tiny_backbones["gemma"], "float32", device="cpu")  # tied to the input embeddings
    assert load_lm_head(tiny_backbones["gemma"], gemma) is gemma.get_input_embeddings().weight


def test_mntp_runs_bidirectional_its_loss_falls_and_the_design_attention_returns(tiny_llama, tmp_path):
    cfg = tiny_config(tiny_llama, tmp_path, max_steps=2, adapt={"steps": 20, "batch_size": 8, "max_length": 32,
                                                                "lr": 1e-2})
    assert cfg.model.attention == "causal"
    t = Trainer(cfg)
    t.setup()
    seen = []
    t.unwrapped.backbone.register_forward_pre_hook(lambda mod, args: seen.append(get_attention(t.unwrapped.backbone)))
    t.run()
    assert seen[:20] == ["bidirectional"] * 20 and set(seen[20:]) == {"causal"}  # MNTP, then contrastive steps
    assert get_attention(t.unwrapped.backbone) == "causal"
    losses = [r["loss"] for r in metric_rows(t.out, "adapt")]
    assert len(losses) == 20 and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.05
    assert _stage_rows(t.out, "contrastive") == [1, 2]  # the report and the study read contrastive lines only


class Stop(RuntimeError):
    pass


def test_an_interrupted_adaptation_resumes_and_a_finished_one_is_not_run_again(tiny_llama, tmp_path, monkeypatch):
    def config(name):
        return tiny_config(tiny_llama, tmp_path, max_steps=4, save_every=2, keep_last=5,
                           output_dir=str(tmp_path / name), adapt={"steps": 6, "batch_size": 8, "max_length": 32,
                                                                   "lr": 1e-2})

    whole = Trainer(config("whole"))
    whole.run()

    backward = Adaptation._backward

    def stop_at_3(self, step):
        if step == 3:
            raise Stop
        return backward(self, step)

    monkeypatch.setattr(Adaptation, "_backward", stop_at_3)
    with pytest.raises(Stop):
        Trainer(config("cut")).run()
    out = tmp_path / "cut"
    assert [p.name for p in (out / "adapt" / "checkpoints").iterdir()] == ["step-000002"]
    monkeypatch.setattr(Adaptation, "_backward", backward)

    def stop_contrastive(step, record):
        raise Stop  # after contrastive step 1, before its first checkpoint

    with pytest.raises(Stop):
        Trainer(config("cut"), callbacks=[stop_contrastive]).run()
    assert _stage_rows(out) == [1, 2, 3, 4, 5, 6]  # resumed at 2: the first call's line 3 was dropped, run again

    monkeypatch.setattr(Adaptation, "_loop", lambda *a: pytest.fail("a finished adaptation ran again"))
    resumed = Trainer(config("cut"))
    resumed.run()
    assert _stage_rows(out) == [1, 2, 3, 4, 5, 6] and _stage_rows(out, "contrastive") == [1, 2, 3, 4]
    assert_same(resumed.unwrapped.trainable_state_dict(), whole.unwrapped.trainable_state_dict(), atol=1e-6)
    assert [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()] == \
        [json.loads(x)["loss"] for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]


def test_simcse_is_info_nce_over_two_dropout_views(tiny_llama, tmp_path):
    cfg = tiny_config(tiny_llama, tmp_path, max_steps=1, **{"model.pooling": "mean", "model.pooling_kwargs": {}},
                      adapt={"objective": "simcse", "steps": 3, "batch_size": 8, "max_length": 16, "lr": 1e-3})
    t = Trainer(cfg)
    t.setup()
    m = t.unwrapped
    texts = ["a cat sat on the mat", "two dogs run in the park", "the quick brown fox", "a man plays a guitar"]
    enc = m.tokenize(texts)
    with Adaptation(t)._mode():  # the stage's attention dropout (0.3)
        m.train()
        torch.manual_seed(0)
        loss = simcse_loss(m, enc, 0.05)
        torch.manual_seed(0)
        q, p = m(**enc), m(**enc)
        m.eval()
        same = m(**enc), m(**enc)
    assert not torch.allclose(q, p, atol=1e-4) and torch.equal(*same)  # the views differ by dropout alone
    expected = F.cross_entropy(20.0 * F.normalize(q) @ F.normalize(p).T, torch.arange(len(texts)))
    assert torch.allclose(loss, expected, atol=1e-5)

    dropouts = {mod.attention_dropout for mod in m.backbone.modules() if hasattr(mod, "attention_dropout")}
    m.train()
    t.run()
    assert [r["objective"] for r in metric_rows(t.out, "adapt")] == ["simcse"] * 3
    assert {mod.attention_dropout for mod in m.backbone.modules() if hasattr(mod, "attention_dropout")} == dropouts
    assert dropouts == {0.0} and m.config.max_length == 32  # the design's settings are back


def test_the_llm2vec_design_adapts_with_mntp(tmp_path):
    from poolattn.experiment import ExperimentConfig, train_config_for

    cfg = ExperimentConfig.model_validate({"designs": ["llm2vec-mntp-bidirectional"]})
    tc = train_config_for(cfg, cfg.designs[0], tmp_path)
    assert (tc.model.pooling, tc.model.attention, tc.adapt.objective) == ("mean", "bidirectional", "mntp")
