"""Texts to token ids, the one place evaluation, training and serving build a model's inputs: the instruction
template, EOS, truncation (counting the instruction or not), echo's two copies, padding, and which tokens are left
out of pooling. EmbeddingModel's format / tokenize / _token_ids / _pad call these with its tokenizer and config.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch

from .echo import echo_tokens
from .modelconfig import Instruction, MaxLengthScope, ModelConfig

log = logging.getLogger(__name__)


class TruncationCount(logging.Filter):
    """Counts token_ids' truncation warnings instead of letting each through: a task or a training run tokenizes
    in many batches, and one line says more than one warning per batch (training truncates by design).

    Args:
        first_note: when given, the first warning is let through with this appended; None: none is.

    `truncated` is the number of texts cut so far."""

    def __init__(self, first_note: str | None = None):
        super().__init__()
        self.first_note, self.truncated, self.seen = first_note, 0, False

    def filter(self, record: logging.LogRecord) -> bool:
        cut = getattr(record, "truncated", None)
        if cut is None:
            return True
        self.truncated += cut
        seen, self.seen = self.seen, True
        if seen or self.first_note is None:
            return False
        record.msg = f"{record.msg}{self.first_note}"
        return True


@contextlib.contextmanager
def counting_truncation(first_note: str | None = None) -> Iterator[TruncationCount]:
    """Within the block, truncation warnings are counted (TruncationCount), not logged: all of them, or all but
    the first with first_note."""
    count = TruncationCount(first_note)
    log.addFilter(count)
    try:
        yield count
    finally:
        log.removeFilter(count)


def per_text(instruction: Instruction, n: int) -> list[str | None]:
    """One instruction (or None) per text, from one for all or a list of n."""
    if instruction is None or isinstance(instruction, str):
        return [instruction] * n
    if len(instruction) != n:
        raise ValueError(f"{len(instruction)} instructions for {n} texts")
    return list(instruction)


def format_texts(config: ModelConfig, texts: list[str], instruction: Instruction = None) -> list[str]:
    """The strings the tokenizer sees: `instruction_template` around every text that has an instruction
    (one for all texts, or one per text); evaluation and training both build their inputs here."""
    return [config.instruction_template.format(instruction=i, text=t) if i else t
            for t, i in zip(texts, per_text(instruction, len(texts)))]


def prefix_chars(config: ModelConfig, texts: list[str], instruction: Instruction) -> list[int]:
    """Characters of each formatted string that belong to the instruction (0 where there is none)."""
    out = []
    for t, i in zip(texts, per_text(instruction, len(texts))):
        out.append(len(config.instruction_template.format(instruction=i, text=t)) - len(t) if i else 0)
    if any(out) and not config.instruction_template.endswith("{text}"):
        raise ValueError("counting the instruction's tokens (mask_instruction, max_length_applies_to: text) "
                         "needs an instruction_template that ends with {text}")
    return out


def token_ids(tokenizer: Any, config: ModelConfig, texts: list[str], instruction: Instruction,
              max_length_applies_to: MaxLengthScope = "all",
              max_length: int | None = None) -> tuple[list[list[int]], list[int]]:
    """Token ids ending in exactly one EOS (appended as the paper does, unless the tokenizer already added
    it), truncated to max_length (default: the config's) with one warning; and per text the number of leading
    tokens left out of pooling: the instruction's under mask_instruction, all but the second copy's under echo
    (echo_ids), else 0. max_length_applies_to "text": max_length counts the tokens after the instruction only
    (the text's and EOS), the instruction's (those mask_instruction leaves out of pooling, BOS included) come
    on top."""
    if max_length_applies_to not in ("all", "text"):
        raise ValueError(f"max_length_applies_to must be 'all' or 'text', got {max_length_applies_to!r}")
    max_length = max_length or config.max_length
    if config.echo:
        return echo_ids(tokenizer, config, texts, instruction, max_length_applies_to, max_length)
    counted = config.mask_instruction or max_length_applies_to == "text"
    chars = prefix_chars(config, texts, instruction) if counted else [0] * len(texts)
    enc = tokenizer(format_texts(config, texts, instruction), add_special_tokens=True, truncation=False,
                    return_offsets_mapping=any(chars), verbose=False)  # truncated below, with our own warning
    ids = enc["input_ids"]
    # A token is the text's if it ends inside the text (a token straddling the boundary, e.g. " word" whose
    # space closes the template, is the text's); special tokens (offsets (0, 0)) before the text are not.
    head = [sum(1 for _, end in offsets if end <= p) if p else 0
            for offsets, p in zip(enc["offset_mapping"], chars)] if any(chars) else chars
    on_top = head if max_length_applies_to == "text" else [0] * len(texts)
    limits = [max_length - 1 + n for n in on_top]
    eos = tokenizer.eos_token_id
    ids = [x[:-1] if x and x[-1] == eos else x for x in ids]
    truncated = sum(len(x) > limit for x, limit in zip(ids, limits))
    if truncated:
        log.warning("%d of %d texts are longer than max_length=%d tokens%s and were truncated", truncated,
                    len(ids), max_length, " after the instruction" if any(on_top) else "",
                    extra={"truncated": truncated})
    skip = head if config.mask_instruction else [0] * len(texts)
    return [x[:limit] + [eos] for x, limit in zip(ids, limits)], [min(s, limit) for s, limit in zip(skip, limits)]


def echo_ids(tokenizer: Any, config: ModelConfig, texts: list[str], instruction: Instruction,
             max_length_applies_to: MaxLengthScope, max_length: int) -> tuple[list[list[int]], list[int]]:
    """token_ids under echo (poolattn.echo.echo_tokens, as the sentence-transformers export runs it): all but
    the second copy's tokens and EOS left out of pooling (mask_instruction adds nothing); a long text cut to
    the same tokens in both copies; max_length_applies_to "text": the tokens before the first copy on top."""
    prefix = config.instruction_template[:-len("{text}")]  # the config ensures it ends with {text}
    out = [echo_tokens(tokenizer, t, prefix.format(instruction=i) if i else None, max_length,
                       max_length_applies_to == "text") for t, i in zip(texts, per_text(instruction, len(texts)))]
    truncated = sum(cut for *_, cut in out)
    if truncated:
        log.warning("%d of %d texts are too long to echo within max_length=%d tokens and were cut (the same "
                    "tokens in both copies)", truncated, len(out), max_length,
                    extra={"truncated": truncated})
    return [ids for ids, _, _ in out], [skip for _, skip, _ in out]


def pad(tokenizer: Any, config: ModelConfig, ids: list[list[int]],
        skip: list[int] | None = None) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask padded on the config's side; pool_mask as well when `skip` leaves leading
    tokens of some text out of pooling."""
    width = max(len(x) for x in ids)
    left = config.padding_side == "left"
    input_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        sl = slice(width - len(x), width) if left else slice(0, len(x))
        input_ids[i, sl] = torch.tensor(x)
        mask[i, sl] = 1
    out = {"input_ids": input_ids, "attention_mask": mask}
    if skip is not None and any(skip):
        pool = mask.clone()
        for i, (x, n) in enumerate(zip(ids, skip)):
            start = width - len(x) if left else 0
            pool[i, start:start + n] = 0
        out["pool_mask"] = pool
    return out
