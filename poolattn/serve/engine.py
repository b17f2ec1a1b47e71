"""The model side of the server: inputs -> token ids (with the same instruction format, specials and EOS as
EmbeddingModel.encode, so served vectors equal encode's), and token ids -> vectors."""
from __future__ import annotations

import numpy as np
import torch


class InputTooLong(ValueError):
    def __init__(self, index: int, length: int, limit: int):
        super().__init__(f"input[{index}] has {length} tokens, more than the limit of {limit} (EOS and the "
                         f"instruction counted); shorten it or send \"truncate\": true")
        self.index, self.length, self.limit = index, length, limit


class Engine:
    def __init__(self, model, max_input_tokens: int | None = None):
        self.model = model.eval()
        limit = model.config.max_length
        if max_input_tokens is not None and max_input_tokens > limit:
            raise ValueError(f"max_input_tokens={max_input_tokens} is above the model's max_length={limit}")
        self.limit = max_input_tokens or limit
        self.dim = model.embedding_dim
        self.vocab_size = len(model.tokenizer)

    def token_ids(self, inputs: list[str] | list[list[int]], instruction: str | None,
                  truncate: bool) -> list[list[int]]:
        """Token ids the model encodes, EOS last. Texts are formatted with the instruction and tokenized as
        EmbeddingModel.encode does; token-id inputs stand for `tokenizer(text)["input_ids"]` and get the EOS.
        Longer than the limit: InputTooLong, or cut to limit - 1 tokens + EOS when `truncate`."""
        tok = self.model.tokenizer
        if inputs and isinstance(inputs[0], str):
            ids = tok(self.model.format(list(inputs), instruction), add_special_tokens=True,
                      truncation=False)["input_ids"]
        else:
            ids = [list(x) for x in inputs]
        for i, x in enumerate(ids):
            if len(x) + 1 > self.limit:
                if not truncate:
                    raise InputTooLong(i, len(x) + 1, self.limit)
                ids[i] = x[:self.limit - 1]
        return [x + [tok.eos_token_id] for x in ids]

    @torch.inference_mode()
    def encode(self, ids: list[list[int]]) -> np.ndarray:
        batch = self.model._pad(ids)
        device = self.model.device
        return self.model(batch["input_ids"].to(device), batch["attention_mask"].to(device)).float().cpu().numpy()


def truncate_dims(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """The first `dimensions` components, L2-renormalised (the model is not Matryoshka-trained: a shortened
    vector is a plain projection, usable but weaker than the full one)."""
    if dimensions is None or dimensions == vectors.shape[1]:
        return vectors
    cut = vectors[:, :dimensions]
    return cut / np.maximum(np.linalg.norm(cut, axis=1, keepdims=True), 1e-12)
