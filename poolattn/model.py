"""EmbeddingModel = backbone + attention switch + pooler + normalisation; one class for every design.

Saved as one folder (sentence-transformers/peft style): `poolattn_config.json`, the LoRA adapter in peft format
(`adapter/`) or full backbone weights (`backbone/`) when trained, `pooler.safetensors`, and the tokenizer.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import prefix, tokenization
from .attention import set_attention
from .backbone import load_backbone, load_tokenizer
from .errors import UserError
from .fileio import atomic_dir, check_weights, read_json
from .modelconfig import CONFIG_NAME, FIXED_ON_LOAD, POOLER_NAME, Instruction, LoraSettings, MaxLengthScope, ModelConfig
from .pooling import build_pooler, is_trainable
from .version import __version__

log = logging.getLogger(__name__)
@contextmanager
def quiet_peft():
    """Hide the one FutureWarning peft's PeftModel.__init__ raises on transformers 5 (it reads the deprecated
    `model.is_gradient_checkpointing`; not ours to fix, and shown on every load of a LoRA model), only around our
    own peft calls; every other warning stays."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


class EmbeddingModel(nn.Module):
    """A design's backbone, attention, pooler and normalisation: texts in, one vector per text out (`encode`).
    A new model has a fresh pooler; `add_lora` prepares it for training; `save_pretrained` / `from_pretrained` write
    and read the folder described at the top of this module.

    Args:
        config: the design (ModelConfig; its docstring lists every field). Default: ModelConfig().
        device: where the model lives: `auto` (this process's GPU, else MPS, else CPU), `cpu`, `cuda:1`, ...; the
            backbone's weights are loaded straight onto it. Not part of the config: a saved folder loads anywhere.
        **overrides: ModelConfig fields that replace the config's, e.g. `EmbeddingModel(pooling="mean")`.

    Attributes:
        prefix_reuse: a runtime switch, not part of the design (on by default, never saved or fingerprinted): where
            attention is causal, the leading tokens all texts of a batch share (their instruction) run once per
            batch instead of once per text (poolattn.prefix); the vectors are the same up to rounding.
        fuse_lora: a runtime switch read by for_inference() (on by default): each LoRA linear then runs as one
            matrix product (poolattn.lorafuse), the same vectors up to rounding; off: peft's unfused path.
    """
    prefix_reuse: bool = True
    fuse_lora: bool = True

    def __init__(self, config: ModelConfig | None = None, device: str | torch.device | None = "auto",
                 **overrides: Any):
        super().__init__()
        config = (config or ModelConfig()).model_copy(update=overrides) if overrides else (config or ModelConfig())
        self.config = ModelConfig.model_validate(config.model_dump())
        self.tokenizer = load_tokenizer(self.config.backbone)
        limit = self.tokenizer.model_max_length  # 1e30 when the tokenizer declares none
        if "max_length" not in config.model_fields_set and isinstance(limit, int) and limit < self.config.max_length:
            # A backbone whose tokenizer declares a shorter limit (an `export --format hf` folder) truncates there.
            self.config = self.config.model_copy(update={"max_length": limit})
        self.tokenizer.padding_side = self.config.padding_side
        backbone = load_backbone(self.config.backbone, self.config.dtype, self.config.attn_implementation, device)
        self.backbone = set_attention(backbone, self.config.attention)
        bc = self.backbone.config
        self.pooler = build_pooler(self.config.pooling, bc.hidden_size, bc.num_hidden_layers,
                                   **self.config.pooling_kwargs).to(backbone.device)
        self._warned_truncation = False

    # ---- construction -------------------------------------------------------------------------------------
    def add_lora(self, r: int = 16, alpha: int = 32, dropout: float = 0.1,
                 target_modules: str | list[str] = "all-linear") -> EmbeddingModel:
        """Wrap the backbone with peft LoRA on all linear projections; the pooler stays fully trainable."""
        from peft import LoraConfig, TaskType, get_peft_model

        settings = LoraSettings(r=r, alpha=alpha, dropout=dropout, target_modules=target_modules)
        lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                          task_type=TaskType.FEATURE_EXTRACTION)
        with quiet_peft():
            self.backbone = get_peft_model(self.backbone, lora)
        self.config = self.config.model_copy(update={"lora": settings})
        return self

    def for_inference(self, fuse_lora: bool | None = None) -> EmbeddingModel:
        """Prepare a LoRA model for encoding only: each LoRA linear fused into one matrix product in the backbone's
        dtype (poolattn.lorafuse; `fuse_lora`, default the attribute of that name), else the LoRA weights cast to
        the backbone's dtype, as training's bf16 autocast ran them.

        Left in fp32, every linear layer of a bf16 backbone upcasts its input for an fp32 LoRA path: encoding a
        trained SmolLM2 ran at half speed (42 vs 83 texts/s). Merging the adapter into bf16 weights instead would
        round most of the small LoRA update away (min cosine to the fp32-adapter vectors 0.996 vs 0.998 here).
        The fingerprint is pinned first, so caches keyed by it still match; the model is then for encoding only
        (load the folder anew to train or save)."""
        if self.config.lora is None or getattr(self, "_inference_only", False):
            return self
        self._pinned_fingerprint = self.fingerprint()
        if self.fuse_lora if fuse_lora is None else fuse_lora:
            from .lorafuse import fuse_lora as fuse

            fuse(self.backbone)  # from the fp32 adapter weights: s B is rounded once
        params = dict(self.backbone.named_parameters())
        dtype = next(p.dtype for n, p in params.items() if "lora_" not in n)
        for name, p in params.items():
            if "lora_" in name:  # adapters left unfused (or fusion off)
                p.data = p.data.to(dtype)
        self._inference_only = True
        self.eval()
        return self

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def embedding_dim(self) -> int:
        return self.pooler.output_dim

    # ---- tokenization (poolattn.tokenization) ------------------------------------------------------------
    def format(self, texts: list[str], instruction: Instruction = None) -> list[str]:
        """The strings the tokenizer sees (tokenization.format_texts)."""
        return tokenization.format_texts(self.config, texts, instruction)

    def _token_ids(self, texts: list[str], instruction: Instruction, max_length_applies_to: MaxLengthScope = "all",
                   max_length: int | None = None) -> tuple[list[list[int]], list[int]]:
        """Token ids ending in one EOS, and per text the leading tokens left out of pooling
        (tokenization.token_ids)."""
        return tokenization.token_ids(self.tokenizer, self.config, texts, instruction, max_length_applies_to,
                                      max_length)

    def _pad(self, ids: list[list[int]], skip: list[int] | None = None) -> dict[str, torch.Tensor]:
        return tokenization.pad(self.tokenizer, self.config, ids, skip)

    def tokenize(self, texts: list[str], instruction: Instruction = None,
                 max_length_applies_to: MaxLengthScope = "all", max_length: int | None = None
                 ) -> dict[str, torch.Tensor]:
        """input_ids and attention_mask (and pool_mask when tokens are left out of pooling: the instruction's under
        mask_instruction, all but the second copy's under echo).

        Args:
            texts: the texts.
            instruction: one for all texts, or one per text (None: none).
            max_length_applies_to: "all" (max_length counts every token) or "text" (the tokens after the
                instruction only; training's option of the same name).
            max_length: the truncation (None: the config's max_length)."""
        return self._pad(*self._token_ids(list(texts), instruction, max_length_applies_to, max_length))

    # ---- forward / encode ---------------------------------------------------------------------------------
    def _pooler_for(self, dtype: torch.dtype) -> nn.Module:
        """The pooler in `dtype` for inference: fp32 poolers cost a bf16 backbone ~3x more than need be on the
        pooler's matmuls. The copy is rebuilt whenever the trained weights change (tensor version counters)."""
        params = list(self.pooler.parameters())
        if not params or params[0].dtype == dtype:
            return self.pooler
        key = (dtype, tuple((p.data_ptr(), p._version) for p in params))
        if getattr(self, "_pooler_copy_key", None) != key:
            import copy

            self.__dict__["_pooler_copy"] = copy.deepcopy(self.pooler).to(dtype).eval()  # not a submodule
            self._pooler_copy_key = key
        return self.__dict__["_pooler_copy"]

    def _can_reuse_prefix(self) -> bool:
        """Whether a batch's shared leading tokens may run once: only where no token sees the tokens after it
        (causal attention; a bidirectional prefix reads the text), `prefix_reuse` is on and the backbone's cache can
        hold a shared prefix (prefix.supported). A design option that breaks that premise turns it off here."""
        if not (self.prefix_reuse and self.config.attention == "causal"):
            return False
        if getattr(self, "_prefix_supported", None) is None:
            self._prefix_supported = prefix.supported(self.backbone)
        return self._prefix_supported

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                pool_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings of a tokenized batch; `pool_mask` (default: attention_mask) says which tokens are pooled."""
        # Positions count real tokens only, so left padding does not shift them (exact for absolute positions too).
        position_ids = (attention_mask.long().cumsum(1) - 1).clamp(min=0)
        args = (self.backbone, input_ids, attention_mask, position_ids, self.pooler.needs_all_layers)
        shared = prefix.shared_prefix_length(input_ids, attention_mask) if self._can_reuse_prefix() else 0
        memo = None if self.training else getattr(self, "_prefix_memo", None)  # encode's, across its batches
        states = prefix.shared_states(*args, shared, memo) if shared else prefix.backbone_states(*args)
        # Training (GradCache's no-grad pass included) uses the fp32 pooler, so both passes agree exactly.
        pooler = self.pooler if self.training else self._pooler_for(states[-1].dtype)
        emb = pooler(states, attention_mask if pool_mask is None else pool_mask).float()
        return F.normalize(emb, dim=-1) if self.config.normalize else emb

    @torch.inference_mode()
    def encode(self, texts: list[str] | str, instruction: Instruction = None, batch_size: int = 32,
               show_progress_bar: bool | None = None) -> np.ndarray:
        """float32 [N, D]; batches sorted by length so padding is small, results in input order."""
        from tqdm.auto import tqdm

        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        if not texts:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        was_training = self.training
        self.eval()
        ids, skip = self._token_ids(texts, instruction)
        order = np.argsort([-len(x) for x in ids], kind="stable")
        out = np.empty((len(texts), self.embedding_dim), dtype=np.float32)
        device = self.device
        show = len(texts) > batch_size if show_progress_bar is None else show_progress_bar
        self._prefix_memo = prefix.PrefixMemo()  # an instruction's prefix pass runs once per call
        try:
            with tqdm(total=len(texts), desc="encode", unit="text", disable=not show) as bar:
                for start in range(0, len(order), batch_size):
                    idx = order[start:start + batch_size]
                    batch = self._pad([ids[i] for i in idx], [skip[i] for i in idx])
                    emb = self(**{k: v.to(device) for k, v in batch.items()})
                    out[idx] = emb.float().cpu().numpy()
                    bar.update(len(idx))
        finally:
            self._prefix_memo = None
        self.train(was_training)
        return out[0] if single else out

    # ---- identity, save, load -----------------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights that differ from the backbone on disk: LoRA (or the whole backbone when fully fine-tuned)
        and the pooler."""
        state = {f"pooler.{k}": v for k, v in self.pooler.state_dict().items()}
        if self.config.lora is not None or self.config.full_finetune:
            for k, v in self.backbone.state_dict().items():
                if self.config.full_finetune or "lora_" in k:
                    state[f"backbone.{k}"] = v
        return state

    def fingerprint(self) -> str:
        """Stable hash of the design and its trained weights: the key of embedding caches."""
        if getattr(self, "_pinned_fingerprint", None):
            return self._pinned_fingerprint
        # pooling_kwargs is left out: the pooler's full config (defaults included) stands for it.
        # matryoshka_dims only where set: models without trained widths keep the fingerprints (and caches) they had.
        skip = {"pooling_kwargs", "attn_implementation"} | ({"matryoshka_dims"} if not self.config.matryoshka_dims
                                                            else set())
        h = hashlib.sha256(self.config.model_dump_json(exclude=skip).encode())
        h.update(json.dumps(self.pooler.get_config(), sort_keys=True).encode())
        for k, v in sorted(self.trainable_state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write the model folder whole or not at all (temporary folder, then rename)."""
        from safetensors.torch import save_file

        if getattr(self, "_inference_only", False):
            raise ValueError("this model was prepared for inference (for_inference: LoRA weights cast to the backbone "
                             "dtype); load the folder again without inference=True to save or train it")
        with atomic_dir(folder) as tmp:
            meta = {"poolattn_version": __version__, "config": self.config.model_dump(),
                    "pooler": {"name": self.config.pooling, **self.pooler.get_config()},
                    "embedding_dim": self.embedding_dim}
            (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
            save_file({k: v.detach().contiguous().cpu() for k, v in self.pooler.state_dict().items()},
                      str(tmp / POOLER_NAME), metadata={"format": "pt"})
            if self.config.full_finetune:
                base = self.backbone.merge_and_unload() if self.config.lora else self.backbone
                base.save_pretrained(tmp / "backbone")
                self.tokenizer.save_pretrained(tmp / "backbone")  # from_pretrained loads the backbone from here
            elif self.config.lora is not None:
                self.backbone.save_pretrained(tmp / "adapter")
            self.tokenizer.save_pretrained(tmp)
        return Path(folder)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, inference: bool = False,
                        device: str | torch.device | None = "auto", fuse_lora: bool | None = None,
                        **overrides: Any) -> EmbeddingModel:
        """Load a saved folder; `overrides` (e.g. dtype='float32') change the config before loading;
        `inference` prepares it for encoding only (faster; see for_inference(), which takes `fuse_lora`). Overrides of FIXED_ON_LOAD fields
        (pooling, ...) to other values than saved are refused: the folder's weights belong to the saved ones."""
        from pydantic import ValidationError
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / CONFIG_NAME).exists():
            raise FileNotFoundError(f"{folder} is not a poolattn model folder (no {CONFIG_NAME})")
        meta = read_json(folder / CONFIG_NAME)
        try:
            saved = ModelConfig.model_validate(meta["config"]).model_dump()
            # Build the pooler from the options it was saved with, so later changes of defaults cannot alter it.
            options = {k: v for k, v in meta["pooler"].items() if k != "name"}
        except (KeyError, TypeError, AttributeError, ValidationError) as err:
            why = (f"{'.'.join(map(str, err.errors()[0]['loc']))}: {err.errors()[0]['msg']}"
                   if isinstance(err, ValidationError) else f"no {err} entry" if isinstance(err, KeyError) else err)
            raise UserError(f"{folder / CONFIG_NAME} is corrupt or from another poolattn version ({why})") from err
        for key in FIXED_ON_LOAD:
            if key in overrides and overrides[key] != saved[key]:
                raise UserError(f"{folder} was trained with {key} {saved[key]!r}; --{key.replace('_', '-')} cannot "
                                f"change it (its weights belong to that {key})", 2)
        for key in ("attention", "echo"):
            if overrides.get(key, saved[key]) != saved[key]:
                log.warning("%s was trained with %s=%s; running it with %s=%s as asked", folder, key, saved[key],
                            key, overrides[key])
        check_weights(folder)  # a truncated pooler, adapter or backbone file is named before anything loads
        try:
            config = ModelConfig.model_validate({**meta["config"], **overrides})
        except ValidationError as err:  # e.g. bidirectional attention asked of an echo model
            raise UserError(f"{folder}: {err.errors()[0]['msg'].removeprefix('Value error, ')}", 2) from err
        lora, full = config.lora, config.full_finetune
        rename = _legacy_pooler(config.pooling, options)
        base_config = config.model_copy(update={"lora": None, "pooling_kwargs": options})
        if full:
            base_config = base_config.model_copy(update={"backbone": str(folder / "backbone")})
        model = cls(base_config, device=device)
        model.config = config.model_copy(update={"pooling_kwargs": options})
        if lora is not None and not full:
            from peft import PeftModel

            if not (folder / "adapter").exists():
                raise ValueError(f"{folder}: config says LoRA but there is no adapter/ folder")
            with quiet_peft():
                model.backbone = PeftModel.from_pretrained(model.backbone, folder / "adapter",
                                                           torch_device=str(model.device))
        state = {rename(k): v for k, v in load_file(str(folder / POOLER_NAME)).items()}
        expected = model.pooler.state_dict()
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        shapes = [f"{k}: saved {tuple(state[k].shape)} vs config {tuple(v.shape)}"
                  for k, v in expected.items() if k in state and state[k].shape != v.shape]
        if missing or unexpected or shapes:
            raise ValueError(f"{folder / POOLER_NAME} does not match the pooler its config describes "
                             f"({config.pooling}, {meta['pooler']}): missing {missing}, unexpected {unexpected}, "
                             f"shape mismatch {shapes}")
        model.pooler.load_state_dict(state)
        model.tokenizer.padding_side = config.padding_side
        return model.for_inference(fuse_lora) if inference else model


def _legacy_pooler(pooling: str, options: dict[str, Any]):
    """Folders saved before pooler presets existed (poolattn 0.1): their `latent` was NV-Embed-style latent attention
    and their `multilayer` had no latent residual; both map onto the `poolattn0` preset exactly (updates `options`
    in place). Returns the renaming of saved weight names (the latent block's weights now sit under `block.`)."""
    if not is_trainable(pooling) or "preset" in options:  # the trainable poolers are the ones with presets
        return lambda k: k
    options["preset"] = "poolattn0"
    if pooling == "latent":
        options.update(query="tokens", residual=True, init_std=1.0)
    return lambda k: k if k.startswith(("block.", "layer_embedding.")) else f"block.{k}"
