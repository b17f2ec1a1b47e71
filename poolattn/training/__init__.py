"""One contrastive trainer for every design: LoRA (peft) + fully trained pooler, InfoNCE with in-batch and hard
negatives over the global batch, optional GradCache, DDP through accelerate, atomic checkpoints and exact resume.

    config      TrainConfig (one YAML file) and `--set a.b=c` overrides
    gradcache   RandContext and contrastive_backward (GradCache)
    checkpoint  atomic commit, complete checkpoints, RNG states, trainable weights
    adapt       the adaptation stage before contrastive training (LLM2Vec's MNTP or SimCSE, `adapt:`)
    trainer     Trainer (setup, step, checkpoints, loop) and train()
Process rank and world size come from poolattn.distributed.world.
"""
from .checkpoint import list_checkpoints, load_trainable_state
from .config import RESUMABLE_FIELDS, TrainConfig, apply_overrides
from .gradcache import RandContext, contrastive_backward
from .trainer import Trainer, TrainingDiverged, train

__all__ = ["RESUMABLE_FIELDS", "RandContext", "TrainConfig", "Trainer", "TrainingDiverged", "apply_overrides",
           "contrastive_backward", "list_checkpoints", "load_trainable_state", "train"]
