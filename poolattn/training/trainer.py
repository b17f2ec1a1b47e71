"""One contrastive trainer for every design: LoRA (peft) + fully trained pooler, InfoNCE with in-batch and hard
negatives over the global batch (optionally over Matryoshka widths), optional GradCache, DDP through accelerate,
atomic checkpoints and exact resume.

A design is only `config.model`; nothing here branches on pooling or attention.

Run folder (`output_dir`):
    config.yaml, config.json      the config as run
    metrics.jsonl                 one line per step: step, loss, lr, grad_norm, seqs_per_s, tokens_per_s, source
                                  (and first the adaptation stage's, marked "stage": "adapt", with `adapt:`)
    adapt/checkpoints/            the adaptation stage's checkpoints (poolattn.training.adapt), with `adapt:`
    tensorboard/                  the same numbers as TensorBoard events, with report_to: tensorboard (tracking)
    checkpoints/step-NNNNNN/      trainable weights, optimizer, scheduler, RNG states, data position (last K kept)
    final/                        EmbeddingModel.save_pretrained folder
    snapshots/step-NNNNNN/        the same at each of `snapshot_steps` (one constant-lr run serves several budgets)
    train_summary.json            status (completed | time_budget), steps, elapsed time
Calling `train` again with the same output_dir resumes from the newest checkpoint, or returns at once when done.
What a checkpoint holds is poolattn.training.checkpoint's; the rest of the folder's bookkeeping is runfolder's.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..datadir import resolve_data_dir
from ..distributed import close_at_exit, world
from ..fileio import write_json
from ..model import EmbeddingModel
from ..tokenization import counting_truncation
from . import checkpoint, runfolder, tracking
from .adapt import Adaptation
from .checkpoint import list_checkpoints
from .config import TrainConfig
from .data import Example, MixedBatchSampler, load_sources
from .distill import distill_loss
from .gradcache import contrastive_backward
from .losses import info_nce, matryoshka_loss

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """Loss or gradient norm became NaN/inf; the last good checkpoint is kept."""


# ---- trainer ------------------------------------------------------------------------------------------------------
class Trainer:
    def __init__(self, config: TrainConfig, callbacks: Sequence[Callable[[int, dict], None]] = ()):
        self.config = config
        self.callbacks = list(callbacks)
        self.out = Path(config.output_dir)
        self.acc = None

    # -- run folder -------------------------------------------------------------------------------------------
    def finished(self) -> bool:
        """A previous call already reached max_steps or spent the time budget and wrote the final model."""
        return runfolder.finished(self.out, self.config)

    # -- setup ------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, set_seed
        from transformers import get_scheduler

        from ..device import fast_bf16, resolve_device

        cfg = self.config
        tracking.check_installed(cfg.report_to)
        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        # Accelerate does placement, DDP and no_sync; autocast is ours (below): its mixed-precision setting is a
        # process-wide singleton that cannot change between runs, and the experiment trains many in one process.
        # cpu=True where there is no accelerator: without it accelerate leaves torchrun's CPU processes in
        # DistributedType.NO (each believing it is alone) although it opens the process group.
        device = resolve_device(cfg.device)  # auto: this process's LOCAL_RANK GPU, as accelerate places it
        if device.type == "cuda":
            torch.cuda.set_device(device)  # accelerate puts a process on the current CUDA device
        self.acc = acc = Accelerator(cpu=device.type == "cpu",
                                     # a pooler over chosen layers leaves the later layers' LoRA without gradients
                                     kwargs_handlers=[DistributedDataParallelKwargs(
                                         broadcast_buffers=False,
                                         find_unused_parameters="layers" in cfg.model.pooling_kwargs)],
                                     log_with=None if cfg.report_to == tracking.NONE else cfg.report_to,
                                     project_dir=str(self.out))
        if acc.device.type != device.type or (device.type == "cuda" and acc.device.index not in (None, device.index)):
            raise ValueError(f"device {cfg.device!r}: the launcher placed this process on {acc.device}; under "
                             f"torchrun / accelerate launch use device: auto (each process takes its own GPU)")
        self.rank, self.world = world()  # the process group accelerate opened, or (0, 1)
        close_at_exit()  # gloo aborts at exit when the group is left open (see poolattn.distributed)
        self.main = self.rank == 0
        # The process that writes this node's run folder: rank 0 on a shared file system; with save_on_each_node
        # (nodes without one), each node's first process, so every node holds whole checkpoints to resume from.
        self.writer = self.main or (cfg.save_on_each_node and acc.is_local_main_process)
        if cfg.batch_size % self.world:
            raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {self.world} processes")
        self.local_batch = cfg.batch_size // self.world
        runfolder.check_config(self.out, cfg)
        sources = load_sources(cfg.data, resolve_data_dir(cfg.data_dir, "data_dir"))
        self.sampler = MixedBatchSampler(sources, cfg.batch_size, cfg.seed)

        set_seed(cfg.seed)  # pooler and LoRA initialisation
        model = EmbeddingModel(cfg.model, device=acc.device)  # straight onto this process's device
        model.prefix_reuse = cfg.prefix_reuse
        self.saved_max_length = model.config.max_length
        if cfg.max_length is not None:
            model.config = model.config.model_copy(update={"max_length": cfg.max_length})
        self.matryoshka = cfg.matryoshka(model.embedding_dim)  # (widths, weights) or None; the saved model records
        model.config = model.config.model_copy(update={"matryoshka_dims": self.matryoshka and self.matryoshka[0]})
        if cfg.lora is not None:
            with warnings.catch_warnings():  # peft asks transformers a deprecated question; not ours to fix
                warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
                model.add_lora(**cfg.lora.model_dump())
        elif cfg.full_finetune:
            model.backbone.requires_grad_(True)
            model.config = model.config.model_copy(update={"full_finetune": True})
            if next(model.backbone.parameters()).dtype != torch.float32:
                log.warning("full fine-tuning with %s weights: set model.dtype: float32 for fp32 master weights",
                            next(model.backbone.parameters()).dtype)
        else:
            model.backbone.requires_grad_(False)
        if cfg.gradient_checkpointing:
            base = model.backbone.get_base_model() if hasattr(model.backbone, "get_base_model") else model.backbone
            # Non-reentrant checkpointing: LoRA gradients flow without enable_input_require_grads (which the
            # reentrant variant needs, the inputs being frozen embeddings), and it works under DDP.
            enable = getattr(base, "activation_checkpointing_enable", None) or base.gradient_checkpointing_enable
            enable({"use_reentrant": False})
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError(f"nothing to train: pooling {cfg.model.pooling!r} has no parameters and lora is null")
        pooler_ids = {id(p) for p in model.pooler.parameters()}
        groups = []
        for is_pooler in (False, True):
            for decay in (True, False):  # no weight decay on biases and norms
                ps = [p for p in self.params if (id(p) in pooler_ids) == is_pooler and (p.ndim >= 2) == decay]
                if ps:
                    groups.append({"params": ps, "weight_decay": cfg.weight_decay if decay else 0.0,
                                   "lr": (cfg.pooler_lr or cfg.lr) if is_pooler else cfg.lr})
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
        name = {"constant": "constant_with_warmup"}.get(cfg.schedule, cfg.schedule)
        self.scheduler = get_scheduler(name, optimizer, num_warmup_steps=cfg.warmup_steps,
                                       num_training_steps=cfg.max_steps)
        self.unwrapped = model
        with warnings.catch_warnings():
            # broadcast_buffers=False is wanted: buffer syncs in forward would be collectives, and processes run
            # different numbers of forwards (GradCache chunks of hard negatives vary per process).
            warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated", FutureWarning)
            self.model, self.optimizer = acc.prepare(model, optimizer)
        self.first_pass_model = acc.unwrap_model(self.model)  # GradCache step (1): no DDP hooks needed
        # transformers loads models in eval mode, which also turns gradient checkpointing off in every layer.
        self.model.train()
        self.amp = cfg.mixed_precision == "bf16" or (cfg.mixed_precision == "auto" and fast_bf16(acc.device))
        self.teacher = None
        if cfg.distill is not None:  # outside the paper's protocol (see poolattn.training.distill)
            from ..backbone import cache_dir
            from .distill import Teacher

            self.teacher = Teacher(cfg.distill, cache_dir() / "teacher")

        # The run folder is written only now that data and model loaded: a failed start leaves it as it was.
        acc.wait_for_everyone()  # every process has read the old config before the main one rewrites it
        if self.writer:
            runfolder.write_config(self.out, cfg)
            for stale in checkpoint.clean_leftovers(self.out):
                log.info("removed %s (left by an interrupted save)", stale)
        acc.wait_for_everyone()

        self.step, self.elapsed_before = 0, 0.0
        checkpoints = list_checkpoints(self.out)
        if checkpoints:
            self.load_checkpoint(checkpoints[-1])
        else:
            set_seed(cfg.seed, device_specific=True)  # different dropout per process
        if self.writer:
            runfolder.truncate_metrics(self.out, self.step)
        acc.wait_for_everyone()

    def save_model(self, folder: Path) -> None:
        """The model as EmbeddingModel.from_pretrained loads it (whole or not at all), with the model's max_length."""
        m = self.unwrapped
        trained_config = m.config
        m.config = m.config.model_copy(update={"max_length": self.saved_max_length})
        try:
            m.save_pretrained(folder)
        finally:
            m.config = trained_config

    # -- checkpoints --------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        if self.teacher is not None and self.writer:
            self.teacher.save()  # teacher vectors are deterministic: a lost cache costs time, never results
        state = {"step": self.step, "elapsed_s": self._elapsed(), "world_size": self.world,
                 "sampler": self.sampler.state_dict()}
        return checkpoint.save(self.out, self.step, self.rank, self.writer, self.unwrapped, self.optimizer,
                               self.scheduler, state, self.config.keep_last, self.acc.wait_for_everyone)

    def load_checkpoint(self, path: Path) -> None:
        state, rng = checkpoint.read_state(path, self.rank, self.unwrapped, self.optimizer, self.scheduler)
        self.sampler.load_state_dict(state["sampler"])
        self.step, self.elapsed_before = state["step"], state["elapsed_s"]
        if rng is not None:
            checkpoint.set_rng_state(rng)
        else:  # resumed on more processes than saved
            from accelerate.utils import set_seed

            set_seed(self.config.seed + self.step, device_specific=True)
        if self.main:
            _say(f"resuming {self.out} from {path.name} (step {self.step}/{self.config.max_steps})")

    # -- one step -----------------------------------------------------------------------------------------------
    def _embed(self, module: torch.nn.Module) -> Callable[[dict], torch.Tensor]:
        device = self.acc.device

        def embed(enc: dict[str, torch.Tensor]) -> torch.Tensor:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.amp):
                return module(**{k: v.to(device) for k, v in enc.items()})
        return embed

    def backward_step(self, examples: list[Example], grad_cache: bool | None = None) -> tuple[torch.Tensor, int, int]:
        """Forward + backward of this process's rows (gradients accumulate in .grad); (loss, texts, tokens).
        grad_cache=False with a chunk_size: plain backward over the same chunks (tests compare the two)."""
        cfg, m = self.config, self.unwrapped
        # hard_negatives false: the rows (so the sampler's batches) are the same; their negatives are just not used
        has_neg = [i for i, e in enumerate(examples) if e.negative is not None] if cfg.hard_negatives else []
        # Instructions as evaluation applies them (model.format): queries always, documents of symmetric sources too.
        doc_ins = [e.instruction if e.symmetric else None for e in examples]
        texts = (([e.query for e in examples], [e.instruction for e in examples]),
                 ([e.positive for e in examples], doc_ins),
                 ([examples[i].negative for i in has_neg], [doc_ins[i] for i in has_neg]))
        size = cfg.chunk_size or len(examples)
        lengths = (None, cfg.passage_max_length, cfg.passage_max_length)  # None: the model's (cfg.max_length)
        groups = [[m.tokenize(t[i:i + size], ins[i:i + size], cfg.max_length_applies_to, n)
                   for i in range(0, len(t), size)] for (t, ins), n in zip(texts, lengths)]
        device = self.acc.device
        neg_index = torch.tensor(has_neg, dtype=torch.long, device=device)
        neg_mask = torch.zeros(len(examples), dtype=torch.bool, device=device)
        neg_mask[neg_index] = True
        symmetric = (torch.tensor([e.symmetric for e in examples], dtype=torch.bool, device=device)
                     if cfg.both_directions else None)

        teacher = None
        if self.teacher is not None:  # the teacher sees the raw texts: it knows no instructions
            tq, tp = (self.teacher.embed(t) for t, _ in texts[:2])
            tneg = tq.new_zeros(tq.shape)  # a batch may hold no hard negative at all: nothing for the teacher then
            if has_neg:
                tneg = tneg.index_copy(0, neg_index.cpu(), self.teacher.embed(texts[2][0]))
            teacher = (tq, torch.cat([tp, tneg]))

        def loss_fn(reps: list[torch.Tensor | None]) -> torch.Tensor:
            q, p, n = reps
            negative = q.new_zeros(q.shape) if n is None else q.new_zeros(q.shape).index_copy(0, neg_index, n)
            loss = info_nce(q, p, negative if cfg.hard_negatives else None, neg_mask, scale=cfg.scale,
                            symmetric=symmetric)
            if teacher is not None:
                valid = torch.cat([torch.ones_like(neg_mask), neg_mask])
                d = cfg.distill
                loss = loss + d.weight * distill_loss(q, torch.cat([p, negative]), *teacher, valid, kind=d.kind,
                                                      scale=cfg.scale, teacher_scale=d.teacher_scale)
            return loss

        if self.matryoshka is not None:  # the loss above per width, on embeddings cut and renormalised (weighted sum)
            loss_fn = matryoshka_loss(loss_fn, *self.matryoshka)
        loss = contrastive_backward(self._embed(self.model), groups, loss_fn, backward=self.acc.backward,
                                    grad_cache=cfg.chunk_size is not None if grad_cache is None else grad_cache,
                                    no_sync=lambda: self.acc.no_sync(self.model),
                                    embed_first=self._embed(self.first_pass_model),
                                    devices=sorted({p.device for p in m.parameters()}, key=str))
        tokens = sum(int(c["attention_mask"].sum()) for g in groups for c in g)
        return loss, sum(len(t) for t, _ in texts), tokens

    def _elapsed(self) -> float:
        return self.elapsed_before + (time.perf_counter() - self._t0)

    # -- loop ---------------------------------------------------------------------------------------------------
    def run(self) -> Path:
        """The adaptation stage (`adapt`, unless contrastive training has begun: poolattn.training.adapt), then
        contrastive training; the final model folder."""
        if self.acc is None:
            self.setup()
        with counting_truncation(" (training logs this once, not for every batch)"):
            if self.config.adapt is not None and not list_checkpoints(self.out):
                Adaptation(self).run()
            return self._train()

    def _train(self) -> Path:
        from tqdm.auto import tqdm

        cfg, acc = self.config, self.acc
        self._t0 = time.perf_counter()
        budget = cfg.max_time_minutes * 60 if cfg.max_time_minutes is not None else None
        status, last_saved = "completed", self.step if list_checkpoints(self.out) else -1
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc=f"train {cfg.model.name}", unit="step",
                   disable=not (self.main and cfg.progress), dynamic_ncols=True)
        metrics_file = open(self.out / "metrics.jsonl", "a") if self.writer else None
        tracking.start(acc, cfg.report_to, self.step, cfg.model_dump(mode="json"))
        try:
            while self.step < cfg.max_steps:
                if budget is not None and self._elapsed() >= budget:
                    acc.set_trigger()
                if acc.check_trigger():
                    status = "time_budget"
                    break
                t = time.perf_counter()
                batch = self.sampler.next_batch()
                mine = batch.examples[self.rank * self.local_batch:(self.rank + 1) * self.local_batch]
                loss, n_texts, n_tokens = self.backward_step(mine)
                norm = acc.clip_grad_norm_(self.params, cfg.max_grad_norm or float("inf"))
                stats = acc.reduce(torch.tensor([float(loss), n_texts, n_tokens], dtype=torch.float64,
                                                 device=acc.device), "sum")
                loss_value = float(stats[0]) / self.world
                if not (math.isfinite(loss_value) and math.isfinite(float(norm))):
                    self.optimizer.zero_grad(set_to_none=True)
                    good = list_checkpoints(self.out)
                    raise TrainingDiverged(
                        f"loss {loss_value} / gradient norm {float(norm)} at step {self.step + 1} (source "
                        f"{batch.source}); stopped before the update. Last good checkpoint: "
                        f"{good[-1] if good else 'none'}. The run is deterministic, so resuming diverges again: "
                        f"start a new output_dir with a lower lr or max_grad_norm")
                lr = self.scheduler.get_last_lr()[0]
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                dt = time.perf_counter() - t
                record = {"step": self.step, "loss": round(loss_value, 6), "lr": lr, "grad_norm": round(float(norm), 6),
                          "seqs_per_s": round(float(stats[1]) / dt, 2), "tokens_per_s": round(float(stats[2]) / dt, 1),
                          "source": batch.source, "elapsed_s": round(self._elapsed(), 2)}
                if metrics_file and (self.step % cfg.log_every == 0 or self.step == cfg.max_steps):
                    metrics_file.write(json.dumps(record) + "\n")
                    metrics_file.flush()
                    tracking.log(acc, record)
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", seqs_s=f"{record['seqs_per_s']:.1f}",
                                refresh=False)
                bar.update(1)
                if self.step % cfg.save_every == 0:
                    self.save_checkpoint()
                    last_saved = self.step
                if self.step in cfg.snapshot_steps and self.writer:
                    self.save_model(self.out / "snapshots" / f"step-{self.step:06d}")
                for cb in self.callbacks:
                    cb(self.step, record)
            if last_saved != self.step:
                self.save_checkpoint()
            final = self.out / "final"
            if self.writer:
                self.save_model(final)
                write_json(self.out / "train_summary.json",
                           {"status": status, "steps": self.step, "max_steps": cfg.max_steps,
                            "elapsed_s": round(self._elapsed(), 2), "final_model": "final", "world_size": self.world})
                if self.main:
                    _say(f"{status}: {self.step} steps in {self._elapsed() / 60:.1f} min -> {final}")
            acc.wait_for_everyone()
            return final
        finally:
            bar.close()
            tracking.finish(acc)
            if metrics_file:
                metrics_file.close()


def _say(msg: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(msg, file=sys.stderr)


def train(config: TrainConfig, callbacks: Sequence[Callable[[int, dict], None]] = ()) -> Path:
    """Train (or resume, or return at once if done) and return the final model folder."""
    trainer = Trainer(config, callbacks)
    runfolder.check_config(trainer.out, config)
    if trainer.finished():
        return trainer.out / "final"
    return trainer.run()
