"""sentence-transformers input module of a poolattn echo model (poolattn.echo): writes every text twice before the
backbone, as poolattn does, and says which tokens are pooled.

Written by `poolattn export` into the exported folder as `poolattn_echo.py`, next to a verbatim copy of poolattn's
`echo.py`; it needs only torch, transformers and sentence-transformers. It comes first in modules.json (before the
Transformer, which then runs the backbone on its input_ids): sentence-transformers tokenizes through its first
module. The pooled tokens go to the PoolattnPooler as a per-text `prompt_length` (the leading tokens left out of
pooling): a key sentence-transformers keeps from the backbone's forward.
"""
from __future__ import annotations

from typing import Any

import torch
from sentence_transformers.models import InputModule

from .echo import echo_tokens


class PoolattnEcho(InputModule):
    """Tokenizes each text echoed (echo_tokens) with the folder's tokenizer, right-padded, cut at max_length.
    `prompt` (sentence-transformers' prompt_name / prompt: the instruction template up to the text) goes before
    the first copy. `prompts` are the folder's own prompts: sentence-transformers versions without `preprocess`
    pass prompt + text as one string, and a text that starts with one of them is split there."""
    config_keys = ["max_length", "prompts"]
    save_in_root = False

    def __init__(self, max_length: int, prompts: list[str] | None = None, tokenizer=None):
        super().__init__()
        self.max_seq_length, self.prompts = max_length, sorted(prompts or [], key=len, reverse=True)
        self.tokenizer = tokenizer

    @property
    def max_length(self) -> int:
        return self.max_seq_length

    def preprocess(self, inputs: list[str], prompt: str | None = None, **kwargs) -> dict[str, Any]:
        return self._batch([(prompt or None, text) for text in inputs])

    def tokenize(self, texts: list[str], **kwargs) -> dict[str, Any]:
        """For sentence-transformers versions that prepend the prompt to the text themselves."""
        pairs = []
        for text in texts:
            prompt = next((p for p in self.prompts if p and text.startswith(p)), None)
            pairs.append((prompt, text[len(prompt):] if prompt else text))
        return self._batch(pairs)

    def _batch(self, pairs: list[tuple[str | None, str]]) -> dict[str, Any]:
        rows = [echo_tokens(self.tokenizer, text, prompt, self.max_seq_length)[:2] for prompt, text in pairs]
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (ids, _) in enumerate(rows):
            input_ids[i, :len(ids)] = torch.tensor(ids)
            mask[i, :len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": mask,
                "prompt_length": torch.tensor([skip for _, skip in rows], dtype=torch.long)}

    def forward(self, features: dict[str, Any], **kwargs) -> dict[str, Any]:
        return features

    def save(self, output_path: str, *args, **kwargs) -> None:
        self.save_config(output_path)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", token=None, cache_folder=None, revision=None,
             local_files_only: bool = False, **kwargs) -> PoolattnEcho:
        from transformers import AutoTokenizer

        hub = dict(token=token, revision=revision, local_files_only=local_files_only)
        config = cls.load_config(model_name_or_path, subfolder=subfolder, cache_folder=cache_folder, **hub)
        # The folder's own tokenizer (the Transformer module's, at the root).
        tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, cache_dir=cache_folder, **hub)
        return cls(**config, tokenizer=tokenizer)
