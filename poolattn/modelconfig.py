"""A design as data: ModelConfig (backbone, attention, pooling and how texts are written and cut) and the LoRA
settings, the names of a saved folder's files, and which of its settings a load may not change."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .backbone import DEFAULT_BACKBONE
from .configdoc import documented
from .pooling import check_pooling_name

Instruction = str | Sequence[str | None] | None  # one for every text, or one per text (None: none)
MaxLengthScope = Literal["all", "text"]  # what max_length counts: every token, or those after the instruction
CONFIG_NAME = "poolattn_config.json"
POOLER_NAME = "pooler.safetensors"
# What a saved folder's weights were made for: pooler.safetensors holds this pooling's weights (with these options)
# and the adapter (or backbone) was trained through it, so another pooling would pool with weights that are not its
# own, or with none: from_pretrained refuses to change these. Attention may change: the weights load unchanged, and
# a model trained causal scored bidirectional (or the reverse) is a user's experiment (the paper's question), so it
# is allowed with a warning. matryoshka_dims records the widths the weights were trained at. dtype, max_length,
# attn_implementation, normalize and the instruction settings change how the model is run, not what its weights mean.
# echo, like attention, may change with a warning: the weights load unchanged, and echo on a model trained without it
# (or the reverse) is a user's experiment (echo's zero-shot claim).
FIXED_ON_LOAD = ("backbone", "pooling", "pooling_kwargs", "lora", "full_finetune", "matryoshka_dims")


@documented
class LoraSettings(BaseModel):
    """The LoRA adapter (peft) put on the backbone for training."""
    model_config = ConfigDict(extra="forbid")
    r: int = Field(16, description="the adapter's rank")
    alpha: int = Field(32, description="LoRA's scaling numerator: the update is scaled by alpha / r")
    dropout: float = Field(0.1, description="dropout on the adapter's input")
    target_modules: str | list[str] = Field("all-linear", description="the backbone modules that get an adapter "
                                            "(peft's `target_modules`); `all-linear`: every linear projection")


@documented
class ModelConfig(BaseModel):
    """A design: which backbone, which attention, which pooling. Everything else follows from it."""
    model_config = ConfigDict(extra="forbid")
    backbone: str = Field(DEFAULT_BACKBONE, description="the decoder: an alias (poolattn.backbone.ALIASES), a local "
                          "Hugging Face folder, a GGUF file or a hub id")
    attention: Literal["causal", "bidirectional"] = Field(
        "causal", description="the backbone's attention mask: `causal` as pretrained, or `bidirectional` (every token "
        "sees every other)")
    pooling: str = Field("eos", description="the pooler that turns hidden states into one vector, by its name in "
                         "poolattn.pooling's registry (an unknown name lists the valid ones)")
    pooling_kwargs: dict[str, Any] = Field({}, description="the pooler's options, e.g. {num_latents: 4, num_heads: 4} "
                                           "or {preset: tang2024}")
    max_length: int = Field(512, description="tokens per text, instruction and EOS included; longer texts are cut "
                            "(the saved model's limit)")
    dtype: str = Field("auto", description="the backbone's weights: auto (bf16 where the device has fast bf16, else "
                       "float32), float32, bfloat16 or float16")
    attn_implementation: Literal["sdpa", "flash_attention_2", "eager"] = Field(
        "sdpa", description="how attention is computed, not what it attends to: the same embeddings up to rounding, "
        "so not part of fingerprint()")
    normalize: bool = Field(True, description="scale every embedding to unit length")
    padding_side: Literal["left", "right"] = Field("right", description="where a batch's shorter texts are padded")
    instruction_template: str = Field("Instruct: {instruction}\nQuery: {text}", description="how a text with an "
                                      "instruction is written for the backbone")
    mask_instruction: bool = Field(
        False, description="leave the instruction's tokens out of the pooled tokens (NV-Embed's pool mask): the "
        "backbone still reads them, but mean-type poolers average, and token-context poolers attend over, the text's "
        "own tokens (+ EOS) only")
    echo: bool = Field(
        False, description="echo embeddings (Springer et al. 2024, poolattn.echo): a causal backbone reads the text "
        "twice (`Instruct: {instruction}\\nQuery: {text}\\nQuery again: {text}`, without an instruction `Document: "
        "{text}\\nDocument again: {text}`) and pools the second copy's tokens and EOS only, each of which has seen the "
        "whole text; about 2x the tokens. max_length counts the whole echoed input: a longer text is cut to the same "
        "tokens in both copies")
    lora: LoraSettings | None = Field(None, description="the trained adapter's settings, set by add_lora(); the saved "
                                      "adapter then must exist (training takes its own `lora:`)")
    full_finetune: bool = Field(False, description="every backbone weight was trained: the saved folder holds them")
    matryoshka_dims: list[int] | None = Field(
        None, description="the widths the model was trained to be truncated to (Matryoshka: the loss summed over the "
        "embedding cut to each width and renormalised), increasing, the full width last; set by the trainer from "
        "the training's `matryoshka_dims`; None: trained at the full width only")

    @field_validator("pooling")
    @classmethod
    def _known_pooling(cls, v: str) -> str:
        return check_pooling_name(v)

    @field_validator("matryoshka_dims")
    @classmethod
    def _widths(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            from .matryoshka import check_widths

            check_widths(v)
        return v

    @model_validator(mode="after")
    def _echo_needs_causal(self) -> ModelConfig:
        if self.echo and self.attention != "causal":
            raise ValueError("echo: true needs attention: causal (echo repeats the text so that a causal model's "
                             "pooled tokens see all of it; under bidirectional attention every token already does)")
        if self.echo and not (self.instruction_template.endswith("{text}")
                              and self.instruction_template.count("{text}") == 1):
            raise ValueError("echo: true needs an instruction_template that ends with {text} (once): the text's "
                             "second copy follows it")
        return self

    @property
    def name(self) -> str:
        return f"{self.pooling}+{self.attention}"
