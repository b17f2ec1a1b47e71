"""The design registry: a design is a name plus the ModelConfig fields (and any training lever) it changes; the
paper's five designs, the mean-pooling baselines, and other designs selectable by name."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator


class Design(BaseModel):
    """One cell of the grid: a name and the ModelConfig fields that differ from the experiment's base."""
    model_config = ConfigDict(extra="forbid")
    name: str
    pooling: str
    attention: Literal["causal", "bidirectional"] = "causal"
    pooling_kwargs: dict[str, Any] = {}
    mask_instruction: bool = False  # leave instruction tokens out of pooling (NV-Embed's pool mask)
    echo: bool = False  # feed the text twice, pool the second copy (echo embeddings; causal attention only)
    # Another backbone than the experiment's base.backbone (a lever outside the paper's protocol, which fixes the
    # base model; the report says so); None: the base's.
    backbone: str | None = None
    seed: int | None = None  # set when the grid is replicated over `seeds` (the name then ends in -s<seed>)
    replicate_of: str | None = None  # the configured design this replicate belongs to
    # A lever: TrainConfig fields this design trains with instead of the experiment's `train` (max_length, lora,
    # distill, ...; a mapping merges one level deep: {lora: {r: 32}} keeps the shared alpha and dropout). The
    # paper's designs change none; a report lists every change.
    train: dict[str, Any] = {}
    lever_of: str | None = None  # the design this one changes one thing of: the study's lever table compares them

    @field_validator("train")
    @classmethod
    def _train_fields(cls, v: dict[str, Any]) -> dict[str, Any]:
        from ..training import TrainConfig

        fixed = {"model", "output_dir", "seed", "snapshot_steps"} & set(v)
        if fixed:
            raise ValueError(f"a design's train may not set {sorted(fixed)}: the experiment sets them per design")
        unknown = set(v) - set(TrainConfig.model_fields)
        if unknown:
            raise ValueError(f"unknown training field(s) {sorted(unknown)}; valid: {', '.join(TrainConfig.model_fields)}")
        return v

    @model_validator(mode="after")
    def _echo_causal(self) -> Design:
        if self.echo and self.attention != "causal":
            raise ValueError(f"design {self.name!r}: echo: true needs attention: causal (echo repeats the text so "
                             f"that a causal model's pooled tokens see all of it)")
        return self


# The paper's five designs as its reference code (yixuantt/PoolingAndAttn @57791d5, model_loaders/model1-5.py)
# defines them: 2 = the Perceiver over the last layer's last (EOS) token only, 3 = over each layer's last-token state,
# 4 = over every last-layer token, 5 = over each layer's masked token mean; pooler preset tang2024 (768 latents).
_TANG = {"preset": "tang2024"}
PAPER_DESIGNS = [
    Design(name="1-eos-causal", pooling="eos", attention="causal"),
    Design(name="2-lastlayer-causal", pooling="latent", attention="causal", pooling_kwargs={**_TANG, "tokens": "last"}),
    Design(name="3-multilayer-causal", pooling="multilayer", attention="causal",
           pooling_kwargs={**_TANG, "tokens": "last"}),
    Design(name="4-lastlayer-bidirectional", pooling="latent", attention="bidirectional",
           pooling_kwargs={**_TANG, "tokens": "all"}),
    Design(name="5-multilayer-bidirectional", pooling="multilayer", attention="bidirectional",
           pooling_kwargs={**_TANG, "tokens": "mean"}),
]
MEAN_BASELINES = [
    Design(name="mean-causal", pooling="mean", attention="causal"),
    Design(name="mean-bidirectional", pooling="mean", attention="bidirectional"),
]
# Other designs by name: NV-Embed's latent attention (its code: tokens query 512 latents, pool mask without the
# instruction), poolattn 0.1's multi-layer pooler (per-layer mean, no latent residual, 16 small latents), and
# design 5 with the pooler initialised to pass the layer means through (`init: mean`, a poolattn option: the lever
# study measured it against design 5 at 120 steps, configs/study_levers.yaml).
EXTRA_DESIGNS = [
    Design(name="nvembed-bidirectional", pooling="latent", attention="bidirectional",
           pooling_kwargs={"preset": "nvembed"}, mask_instruction=True),
    Design(name="poolattn0-multilayer-bidirectional", pooling="multilayer", attention="bidirectional",
           pooling_kwargs={"preset": "poolattn0", "tokens": "mean"}),
    Design(name="multilayer-meaninit-bidirectional", pooling="multilayer", attention="bidirectional",
           pooling_kwargs={**_TANG, "tokens": "mean", "init": "mean"}),
    # LLM2Vec (BehnamGhader et al. 2024, arXiv 2404.05961; McGill-NLP/llm2vec @312adcfb): bidirectional attention
    # adapted by masked next-token prediction before contrastive training, mean pooling over the tokens (its
    # pooling_mode mean); the stage's settings are poolattn.training.adapt.AdaptConfig's defaults. LLM2Vec's optional
    # SimCSE step after MNTP has no named design: a run has one adaptation stage (`adapt: {objective: simcse}` alone
    # is SimCSE without MNTP, not LLM2Vec's recipe).
    Design(name="llm2vec-mntp-bidirectional", pooling="mean", attention="bidirectional",
           train={"adapt": {"objective": "mntp"}}),
    # Echo embeddings (Springer et al. 2024; jakespringer/echo-embeddings @c752c46, poolattn.echo): causal
    # attention, the text twice, the second copy pooled. The reference's EchoPooling offers both of its strategies
    # and a checkpoint for each: `mean` (its default; echo-mistral-7b-instruct-meantoken) over the second copy and
    # EOS, and `last` (example.py's; -lasttoken), the EOS after the second copy. echo-mean-causal is the first,
    # echo-eos-causal the second (design 1 with echo).
    Design(name="echo-eos-causal", pooling="eos", attention="causal", echo=True),
    Design(name="echo-mean-causal", pooling="mean", attention="causal", echo=True),
    # The mean over a chosen range of layers (issue 30), no trainable pooler. The range is untrained SmolLM2-135M's
    # best: `poolattn layers --tasks BIOSSES --n-texts 200 --dtype float32` (causal, mean pooling, BIOSSES x 100):
    # layer 1 63.9, layer 2 67.1, layers 3-11 49.3-63.7, then a drop (12-30: 24.5-39.9; the last, as mean-causal,
    # 39.9). The mean pooler over layers 1..2 scores 65.6, the best of the ranges of two or more layers (1..11, the
    # layers before the drop at 12: 58.2; 1..30: 30.4). Picked on BIOSSES's test pairs, a lite task, untrained: the
    # trained design may prefer other layers (docs/results.md's levers: 5-meaninit-first10).
    Design(name="mean-layers-causal", pooling="mean", attention="causal", pooling_kwargs={"layers": "1..2"}),
]
NAMED_DESIGNS = {d.name: d for d in PAPER_DESIGNS + MEAN_BASELINES + EXTRA_DESIGNS}


def named_design(name: str) -> Design:
    if name not in NAMED_DESIGNS:
        raise ValueError(f"unknown design {name!r}; named designs: {', '.join(NAMED_DESIGNS)} "
                         f"(or give a mapping with name, pooling, attention, pooling_kwargs)")
    return NAMED_DESIGNS[name]
