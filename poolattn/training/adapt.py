"""An adaptation stage before contrastive training: LLM2Vec's (BehnamGhader et al. 2024, arXiv 2404.05961) masked
next-token prediction (MNTP) or unsupervised SimCSE on the training texts, training the LoRA adapter that contrastive
training then continues.

As LLM2Vec's code does it (McGill-NLP/llm2vec @312adcfb: experiments/run_mntp.py, experiments/run_simcse.py,
train_configs/mntp/*.json, train_configs/simcse/*.json):
  MNTP    bidirectional attention, whatever the design's (restored after the stage). The texts are tokenized,
          concatenated and cut into blocks of max_length tokens, the remainder dropped (run_mntp's group_texts).
          transformers' DataCollatorForLanguageModeling picks mask_probability of the non-special tokens; of those
          80% become the mask token, 10% a random token, 10% stay (LLM2Vec's `default` collator; `all_mask`: all
          become the mask token, its DataCollatorForLanguageModelingWithFullMasking). A tokenizer without a mask token
          masks with `_` (mask_token_type `blank`). The token at position i is predicted from the logits at position
          i-1: LLM2Vec's LlamaBiForMNTP is a LlamaForCausalLM, whose loss shifts the labels by one. The logits come
          from the backbone's own pretrained LM head (poolattn.backbone.load_lm_head), frozen; the loss is the
          cross-entropy over the masked tokens.
  SimCSE  every text twice through the model (the design's pooling and attention) in training mode, the backbone's
          attention dropout set to `dropout` (LLM2Vec passes simcse_dropout as the model's attention_dropout) beside
          the adapter's own: the two views are each other's positive, the batch's other texts the negatives
          (its HardNegativeNLLLoss: cosine / temperature, cross-entropy; poolattn.training.losses.info_nce).
  Both    the optimizer as transformers' Trainer defaults, which LLM2Vec's configs keep: AdamW, weight decay 0, no
          warmup, gradient norm clipped to 1. Its lr decays linearly over 3 epochs of its corpus, so at its 1000
          steps (stop_after_n_steps) it has fallen by ~5%: here it is constant.
Deviations (CPU scale) are named in AdaptConfig's fields. One more: LLM2Vec merges the MNTP adapter into the weights
and trains a fresh LoRA for SimCSE and for supervised training; here the run's one adapter (`lora:`) is trained by
the stage and continues into contrastive training. The saved model stays a backbone plus one adapter, loadable and
reproducible as every other (a merged adapter would have to be saved as a whole backbone); the difference is that the
two stages' updates share one rank-r adapter instead of adding up to rank 2r.

Resumable like training: checkpoints in <output_dir>/adapt/checkpoints/ (poolattn.training.checkpoint; training's
save_every and keep_last, and one at the stage's last step), metrics.jsonl lines marked `"stage": "adapt"`. A run
interrupted in the stage resumes from its checkpoint; a finished stage is loaded from its last checkpoint, not run
again; once contrastive training has a checkpoint, its weights include the stage's and the stage is not looked at.
The stage is not sent to report_to trackers, and max_time_minutes does not count it.
"""
from __future__ import annotations

import copy
import json
import math
import time
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..attention import set_attention
from ..configdoc import documented
from ..prefix import backbone_states
from . import checkpoint
from .data import SourceConfig, load_sources
from .losses import info_nce

STAGE = "adapt"  # the stage marker of metrics.jsonl lines and the stage's folder in the run folder
BLANK = "_"  # LLM2Vec's mask_token_type `blank`: the mask token of decoders whose tokenizer has none
MAX_GRAD_NORM = 1.0  # transformers' TrainingArguments default, which LLM2Vec's configs keep
# Per objective, LLM2Vec's values where its configs set them, else transformers' defaults; CPU-scale changes in the
# fields' descriptions.
OBJECTIVE_DEFAULTS = {"mntp": {"lr": 5e-5, "batch_size": 16, "max_length": 128},
                      "simcse": {"lr": 3e-5, "batch_size": 32, "max_length": 128}}
ONLY_FOR = {"mntp": ("mask_probability", "data_collator", "mask_token"), "simcse": ("dropout", "temperature")}


@documented
class AdaptConfig(BaseModel):
    """An adaptation stage before contrastive training (poolattn.training.adapt): LLM2Vec's masked next-token
    prediction or unsupervised SimCSE on the training texts, training the run's LoRA adapter (`lora:`), which
    contrastive training then continues. Defaults are LLM2Vec's (McGill-NLP/llm2vec's train_configs) where they fit
    the CPU scale; the descriptions say where they differ."""
    model_config = ConfigDict(extra="forbid")
    objective: Literal["mntp", "simcse"] = Field(
        "mntp", description="`mntp`: masked next-token prediction with bidirectional attention (LLM2Vec's first step); "
        "`simcse`: unsupervised SimCSE, a text's two dropout views as positives (its optional second step)")
    steps: int = Field(100, ge=1, description="optimizer steps (LLM2Vec: 1000; 100 at CPU scale)")
    batch_size: int | None = Field(
        None, ge=1, description="sequences per step over all processes; None: mntp 16 blocks (LLM2Vec: 32), simcse 32 "
        "texts (LLM2Vec: 128)")
    lr: float | None = Field(None, gt=0, description="the constant learning rate (AdamW, no weight decay, no "
                             "warmup); None: mntp 5e-5 (transformers' default, which LLM2Vec's MNTP configs keep), "
                             "simcse 3e-5 (LLM2Vec's)")
    max_length: int | None = Field(
        None, ge=2, description="tokens per sequence: mntp's blocks of concatenated texts, simcse's truncation; None: "
        "128 (LLM2Vec: mntp 512, simcse 128)")
    mask_probability: float = Field(0.2, gt=0, lt=1, description="mntp: the fraction of tokens picked for prediction "
                                    "(special tokens never; LLM2Vec's mlm_probability for Llama 2/3 and "
                                    "Sheared-LLaMA, 0.8 with all_mask for Mistral)")
    data_collator: Literal["default", "all_mask"] = Field(
        "default", description="mntp: what a picked token becomes: `default` (transformers' "
        "DataCollatorForLanguageModeling) the mask token 80%, a random token 10%, itself 10%; `all_mask` always the "
        "mask token (LLM2Vec's data_collator_type of the same names)")
    mask_token: str | None = Field(
        None, description="mntp: the mask token, one token of the vocabulary; None: the tokenizer's own, else `_` "
        "(LLM2Vec's mask_token_type blank, its choice for decoders without one)")
    dropout: float = Field(0.3, ge=0, lt=1, description="simcse: the backbone's attention dropout during the stage, "
                           "which makes a text's two views differ (LLM2Vec's simcse_dropout); lora.dropout applies "
                           "too (LLM2Vec's adapter: 0.05)")
    temperature: float = Field(0.05, gt=0, description="simcse: the softmax temperature of the cosine similarities "
                               "(LLM2Vec's loss_scale 20 = 1 / 0.05)")
    data: list[SourceConfig] | None = Field(
        None, description="where the texts come from (SourceConfig, as training's `data`): every row's query and "
        "positive, each text once, without instructions; None: the training sources (`data`), i.e. the pack's "
        "training rows (LLM2Vec: Wikitext-103 for mntp, Wiki1M for simcse)")

    @model_validator(mode="after")
    def _objective(self):
        other = [f for o, fields in ONLY_FOR.items() if o != self.objective for f in fields
                 if getattr(self, f) != type(self).model_fields[f].default]
        if other:
            raise ValueError(f"adapt: {', '.join(other)} do not apply to objective {self.objective!r}")
        for name, value in OBJECTIVE_DEFAULTS[self.objective].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        return self


def adaptation_texts(sources) -> list[str]:
    """Every row's query and positive, in source and row order, each text once."""
    return list(dict.fromkeys(t for s in sources for e in s.examples for t in (e.query, e.positive)))


def mntp_blocks(tokenizer, texts: list[str], length: int) -> torch.Tensor:
    """[n, length]: the texts' tokens, each text ending in EOS (as the embedding model writes them: the separator
    where a tokenizer adds no BOS), concatenated and cut into blocks; the remainder is dropped."""
    eos = tokenizer.eos_token_id
    ids = tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]
    stream = [t for x in ids for t in (x if x and x[-1] == eos else [*x, eos])]
    n = len(stream) // length
    return torch.tensor(stream[:n * length], dtype=torch.long).view(n, length)


def mntp_collator(tokenizer, config: AdaptConfig):
    """transformers' masking collator on a copy of the tokenizer that has the mask token."""
    from transformers import DataCollatorForLanguageModeling

    tok = copy.deepcopy(tokenizer)
    if config.mask_token is not None or tok.mask_token is None:
        tok.mask_token = config.mask_token or BLANK
    if tok.convert_tokens_to_ids(tok.mask_token) in (None, tok.unk_token_id):
        raise ValueError(f"adapt.mask_token {tok.mask_token!r} is not one token of the tokenizer's vocabulary")
    full = config.data_collator == "all_mask"
    return DataCollatorForLanguageModeling(tok, mlm_probability=config.mask_probability,
                                           mask_replace_prob=1.0 if full else 0.8,
                                           random_replace_prob=0.0 if full else 0.1)


def mntp_inputs(blocks: torch.Tensor, collator, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, targets) of a batch of blocks: the collator's masking, drawn from torch's generator seeded with
    `seed`, and targets holding at position i-1 the original token of each picked position i (LLM2Vec's shift), -100
    elsewhere (a token picked at position 0 has no position before it: never predicted, as in LLM2Vec)."""
    special = torch.isin(blocks, torch.tensor(collator.tokenizer.all_special_ids, dtype=torch.long))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inputs, labels = collator.torch_mask_tokens(blocks.clone(), special_tokens_mask=special)
    targets = torch.full_like(labels, -100)
    targets[:, :-1] = labels[:, 1:]
    return inputs, targets


def mntp_loss(backbone, head: torch.Tensor, input_ids: torch.Tensor,
              targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(mean cross-entropy, correct predictions, predicted tokens) of the head's logits at the target positions
    (the logits of the other positions are never computed: the same loss as a causal LM's over all positions)."""
    mask = torch.ones_like(input_ids)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    hidden = backbone_states(backbone, input_ids, mask, positions, False)[0]
    picked = targets != -100
    logits = F.linear(hidden[picked], head)
    cap = getattr(backbone.config, "final_logit_softcapping", None)  # Gemma 2's head caps its logits
    if cap:
        logits = torch.tanh(logits / cap) * cap
    target = targets[picked]
    if not target.numel():
        return hidden.sum() * 0.0, torch.zeros((), device=hidden.device), 0
    return F.cross_entropy(logits.float(), target), (logits.argmax(-1) == target).sum(), target.numel()


def simcse_loss(model, enc: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
    """InfoNCE of a batch against itself through two forward passes: each text's two dropout views are positives,
    the other texts of the (global) batch negatives."""
    return info_nce(model(**enc), model(**enc), scale=1.0 / temperature)


def _step_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


class Adaptation:
    """The stage for a set-up Trainer: its model, trainable parameters, processes and run folder."""

    def __init__(self, trainer):
        self.t, self.cfg = trainer, trainer.config.adapt
        self.root = trainer.out / STAGE

    def run(self) -> None:
        from accelerate.utils import set_seed
        from transformers import get_scheduler

        from ..datadir import resolve_data_dir
        from . import runfolder  # imports the config, which imports this module

        t, cfg = self.t, self.cfg
        if cfg.batch_size % t.world:
            raise ValueError(f"adapt.batch_size {cfg.batch_size} is not divisible by the {t.world} processes")
        sources = (t.sampler.sources if cfg.data is None else
                   load_sources(cfg.data, resolve_data_dir(t.config.data_dir, "data_dir")))
        texts = adaptation_texts(sources)
        m = t.unwrapped
        if cfg.objective == "mntp":
            from ..backbone import load_lm_head

            self.items, self.collator = mntp_blocks(m.tokenizer, texts, cfg.max_length), mntp_collator(m.tokenizer, cfg)
            self.head, what = load_lm_head(m.config.backbone, m.backbone), f"blocks of {cfg.max_length} tokens"
        else:
            self.items, what = texts, "distinct texts"
        self.per_epoch = len(self.items) // cfg.batch_size
        if not self.per_epoch:
            raise ValueError(f"adapt: the texts make {len(self.items)} {what}, fewer than adapt.batch_size "
                             f"{cfg.batch_size}")
        optimizer = torch.optim.AdamW(t.params, lr=cfg.lr, weight_decay=0.0)
        scheduler = get_scheduler("constant", optimizer)
        if t.writer:
            checkpoint.clean_leftovers(self.root)
        t.acc.wait_for_everyone()
        step, elapsed = 0, 0.0
        found = checkpoint.list_checkpoints(self.root)
        if found:
            state, rng = checkpoint.read_state(found[-1], t.rank, m, optimizer, scheduler)
            step, elapsed = state["step"], state["elapsed_s"]
            if rng is not None:
                checkpoint.set_rng_state(rng)
            else:  # resumed on more processes than saved
                set_seed(t.config.seed + step, device_specific=True)
            if t.main:
                _say(f"{cfg.objective}: done ({step} steps), loaded from {found[-1]}" if step >= cfg.steps else
                     f"resuming {cfg.objective} from {found[-1].name} (step {step}/{cfg.steps})")
        if t.writer:
            runfolder.truncate_metrics(t.out, step, STAGE)
        t.acc.wait_for_everyone()
        if step < cfg.steps:
            self._loop(step, elapsed, optimizer, scheduler)
        # Contrastive training starts from the same random state whether the stage ran now or in an earlier call.
        set_seed(t.config.seed, device_specific=True)

    @contextmanager
    def _mode(self):
        """MNTP: bidirectional attention; SimCSE: the attention dropout and max_length; restored after."""
        m, cfg = self.t.unwrapped, self.cfg
        config, saved = m.config, []
        if cfg.objective == "mntp":
            set_attention(m.backbone, "bidirectional")
        else:
            m.config = config.model_copy(update={"max_length": cfg.max_length})
            saved = [(mod, mod.attention_dropout) for mod in m.backbone.modules()
                     if isinstance(getattr(mod, "attention_dropout", None), float)]
            for mod, _ in saved:
                mod.attention_dropout = cfg.dropout
        try:
            yield
        finally:
            set_attention(m.backbone, config.attention)
            m.config = config
            for mod, p in saved:
                mod.attention_dropout = p

    def _batch(self, step: int) -> np.ndarray:
        """The global batch of `step`: that epoch's shuffled items (a generator seeded with (seed, epoch)), in batches;
        an epoch's incomplete last batch is dropped."""
        epoch, k = divmod(step, self.per_epoch)
        if getattr(self, "_epoch", None) != epoch:
            self._epoch = epoch
            self._order = np.random.default_rng([self.t.config.seed, 1 << 21, epoch]).permutation(len(self.items))
        b = self.cfg.batch_size
        return self._order[k * b:(k + 1) * b]

    def _backward(self, step: int) -> list[float]:
        """Forward and backward of this process's share of the step's batch: [loss, sequences, tokens, correct,
        predicted] (the last two: MNTP's masked-token accuracy)."""
        t, cfg, m = self.t, self.cfg, self.t.unwrapped
        rows, device = slice(t.rank * cfg.batch_size // t.world, (t.rank + 1) * cfg.batch_size // t.world), t.acc.device
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.amp):
            if cfg.objective == "mntp":  # the global batch is masked alike on every process, then shared out
                inputs, targets = mntp_inputs(self.items[torch.as_tensor(self._batch(step))], self.collator,
                                              _step_seed(t.config.seed, step))
                inputs, targets = inputs[rows].to(device), targets[rows].to(device)
                loss, correct, n = mntp_loss(m.backbone, self.head, inputs, targets)
                tokens, correct = inputs.numel(), float(correct)
            else:
                texts = [self.items[i] for i in self._batch(step)[rows]]
                enc = {k: v.to(device) for k, v in m.tokenize(texts).items()}
                loss, correct, n = simcse_loss(m, enc, cfg.temperature), 0, 0
                tokens = 2 * int(enc["attention_mask"].sum())
        t.acc.backward(loss)
        if t.world > 1:  # the stage runs the model outside DDP's wrapper: average the gradients as DDP would
            for p in t.params:
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad.div_(t.world)
        return [float(loss.detach()), rows.stop - rows.start, tokens, correct, n]

    def _loop(self, step: int, elapsed_before: float, optimizer, scheduler) -> None:
        from tqdm.auto import tqdm

        from .trainer import TrainingDiverged

        t, cfg, acc = self.t, self.cfg, self.t.acc
        t0 = time.perf_counter()
        bar = tqdm(total=cfg.steps, initial=step, desc=f"adapt {cfg.objective} {t.config.model.name}", unit="step",
                   disable=not (t.main and t.config.progress), dynamic_ncols=True)
        metrics = open(t.out / "metrics.jsonl", "a") if t.writer else None
        try:
            with self._mode():
                while step < cfg.steps:
                    tick = time.perf_counter()
                    stats = acc.reduce(torch.tensor(self._backward(step), dtype=torch.float64, device=acc.device),
                                       "sum").tolist()
                    norm = float(torch.nn.utils.clip_grad_norm_(t.params, MAX_GRAD_NORM))
                    loss = stats[0] / t.world
                    if not (math.isfinite(loss) and math.isfinite(norm)):
                        optimizer.zero_grad(set_to_none=True)
                        raise TrainingDiverged(f"adapt ({cfg.objective}): loss {loss} / gradient norm {norm} at step "
                                               f"{step + 1}; stopped before the update: start a new output_dir with a "
                                               f"lower adapt.lr")
                    lr = scheduler.get_last_lr()[0]
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    dt, elapsed = time.perf_counter() - tick, elapsed_before + time.perf_counter() - t0
                    accuracy = {"accuracy": round(stats[3] / max(stats[4], 1), 4)} if cfg.objective == "mntp" else {}
                    record = {"stage": STAGE, "objective": cfg.objective, "step": step, "loss": round(loss, 6),
                              **accuracy, "lr": lr, "grad_norm": round(norm, 6), "seqs_per_s": round(stats[1] / dt, 2),
                              "tokens_per_s": round(stats[2] / dt, 1), "elapsed_s": round(elapsed, 2)}
                    if metrics and (step % t.config.log_every == 0 or step == cfg.steps):
                        metrics.write(json.dumps(record) + "\n")
                        metrics.flush()
                    bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                    bar.update(1)
                    if step % t.config.save_every == 0 or step == cfg.steps:
                        checkpoint.save(self.root, step, t.rank, t.writer, t.unwrapped, optimizer, scheduler,
                                        {"step": step, "elapsed_s": elapsed, "world_size": t.world,
                                         "objective": cfg.objective}, t.config.keep_last, acc.wait_for_everyone)
            if t.main:
                _say(f"adapt {cfg.objective}: {step} steps in {(elapsed_before + time.perf_counter() - t0) / 60:.1f} "
                     f"min")
        finally:
            bar.close()
            if metrics:
                metrics.close()


def _say(msg: str) -> None:
    import sys

    from tqdm.auto import tqdm

    tqdm.write(msg, file=sys.stderr)
