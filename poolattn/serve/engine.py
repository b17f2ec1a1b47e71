"""The model side of the server: inputs -> token ids (with the same instruction format, specials and EOS as
EmbeddingModel.encode, so served vectors equal encode's), and token ids -> vectors."""
from __future__ import annotations

import sys

import numpy as np
import torch


class InputTooLong(ValueError):
    def __init__(self, index: int, length: int, limit: int, echo: bool = False):
        super().__init__(f"input[{index}] has {length} tokens, more than the limit of {limit} (EOS and the "
                         f"instruction counted{', the text twice: the model echoes it' if echo else ''}); shorten it "
                         f"or send \"truncate\": true")
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
                  truncate: bool) -> list[tuple[list[int], int]]:
        """Per input: the token ids the model encodes (EOS last) and how many leading ones are left out of
        pooling (the instruction's, when the model masks it). Texts go through EmbeddingModel's own tokenization,
        so served vectors equal encode's; token-id inputs stand for `tokenizer(text)["input_ids"]` and get the
        EOS (an echo model decodes them and echoes the text: _echo_ids). Longer than the limit: InputTooLong, or
        cut to limit - 1 tokens + EOS when `truncate`."""
        eos = self.model.tokenizer.eos_token_id
        if self.model.config.echo:
            return self._echo_ids(inputs, instruction, truncate)
        if inputs and isinstance(inputs[0], str):
            ids, skip = self.model._token_ids(list(inputs), instruction)
            full = self.model.config.max_length
            lengths = [len(x) if len(x) < full else self._untruncated(t, instruction) for x, t in zip(ids, inputs)]
        else:
            ids = [list(x[:-1] if x[-1] == eos else x) + [eos] for x in inputs]
            skip, lengths = [0] * len(ids), [len(x) for x in ids]
        out = []
        for i, (x, n, length) in enumerate(zip(ids, skip, lengths)):
            if length > self.limit:
                if not truncate:
                    raise InputTooLong(i, length, self.limit)
                x, n = x[:self.limit - 1] + [eos], min(n, self.limit - 1)
            out.append((x, n))
        return out

    def _echo_ids(self, inputs: list[str] | list[list[int]], instruction: str | None,
                  truncate: bool) -> list[tuple[list[int], int]]:
        """token_ids for an echo model: the input is written twice (token ids are decoded to their text first), so
        a long one is cut in the text, the same tokens in both copies, not at the end (that would cut the copy
        that is pooled); its length is counted echoed."""
        m = self.model
        texts = inputs if isinstance(inputs[0], str) else m.tokenizer.batch_decode(inputs, skip_special_tokens=True)
        ids, skip = m._token_ids(list(texts), instruction, max_length=sys.maxsize)  # untruncated: the lengths
        for i, x in enumerate(ids):
            if len(x) > self.limit and not truncate:
                raise InputTooLong(i, len(x), self.limit, echo=True)
        if any(len(x) > self.limit for x in ids):
            ids, skip = m._token_ids(list(texts), instruction, max_length=self.limit)
        return list(zip(ids, skip))

    def _untruncated(self, text: str, instruction: str | None) -> int:
        """Tokens of a text that filled max_length: the model cut it there, or it fits exactly."""
        tok = self.model.tokenizer
        x = tok(self.model.format([text], instruction), add_special_tokens=True)["input_ids"][0]
        return len(x) + (x[-1] != tok.eos_token_id)

    @torch.inference_mode()
    def encode(self, inputs: list[tuple[list[int], int]]) -> np.ndarray:
        ids, skip = [x for x, _ in inputs], [n for _, n in inputs]
        batch = self.model._pad(ids, skip)  # adds pool_mask only where an instruction is masked out
        device = self.model.device
        return self.model(**{k: v.to(device) for k, v in batch.items()}).float().cpu().numpy()

