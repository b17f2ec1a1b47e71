"""Echo embeddings (Springer et al. 2024, arXiv 2402.15449): a causal model reads the text twice and pools the
second copy only, whose every token has seen the whole text (the first copy), at about twice the tokens.

The reference code, jakespringer/echo-embeddings @c752c4641d3e78378934e860ac76843f8a5d1880 (example.py's
templates, echo_embeddings.py's EchoParser and EchoPooling), writes

    query:    <s>Instruct:{!%%prompt%%,}\\nQuery:{!%%text%%}\\nQuery again:{%%text%%}{</s>}
    document: <s>Document:{!%%text%%}\\nDocument again:{%%text%%}{</s>}

and pools the tokens in braces without `!`: the second copy's and the EOS (EchoPooling: their mean, or the last
one, the EOS). Here a text with an instruction is written with the model's instruction_template (default
`Instruct: {instruction}\\nQuery: {text}`) followed by QUERY_AGAIN and the text; a text without one (a document) as
DOCUMENT + text + DOCUMENT_AGAIN + text; EOS last. Two deviations, both for poolattn's tokenizers and limits:
- the whole string is tokenized at once, as poolattn tokenizes every instructed text, and the second copy's tokens
  are those that end inside it (its first token may carry the space before it, e.g. " the"). The reference
  tokenizes each piece alone, which with its SentencePiece tokenizer (Mistral) puts that space back; with a
  byte-level BPE (SmolLM2) it would glue the text to the label ("again:the").
- max_length counts the whole echoed sequence (the saved model's limit), so a long text is cut to the same
  prefix in both copies until all fits; the reference cuts each piece to max_length on its own (up to about
  twice max_length in all).

This file needs nothing but a transformers tokenizer: `poolattn export` copies it verbatim into
sentence-transformers folders (next to poolattn_echo.py), so poolattn and the export tokenize alike.
"""
from __future__ import annotations

QUERY_AGAIN = "\nQuery again: "  # after a text written with the instruction template
DOCUMENT, DOCUMENT_AGAIN = "Document: ", "\nDocument again: "  # a text without an instruction


def echo_tokens(tokenizer, text: str, prefix: str | None, max_length: int,
                prefix_on_top: bool = False) -> tuple[list[int], int, bool]:
    """The token ids of `text` echoed (ending in exactly one EOS), how many leading ones are not pooled (all but
    the second copy's and the EOS), and whether the text was cut to fit.

    Args:
        tokenizer: a transformers tokenizer with offsets (a fast one).
        text: the text.
        prefix: the instruction template up to {text}, formatted with the text's instruction ("Instruct: ...
            \\nQuery: "), or None for a text without one.
        max_length: the most tokens in all, EOS included; a longer text is cut (the same tokens in both copies).
        prefix_on_top: max_length counts the tokens after the prefix only (training's max_length_applies_to
            "text"); the prefix's (DOCUMENT for a text without an instruction) come on top.
    """
    before, between = (prefix, QUERY_AGAIN) if prefix is not None else (DOCUMENT, DOCUMENT_AGAIN)
    eos = tokenizer.eos_token_id
    limit, cut = None, False
    while True:
        s = before + text + between + text
        start = len(s) - len(text)  # the second copy's first character
        enc = tokenizer(s, add_special_tokens=True, truncation=False, return_offsets_mapping=True, verbose=False)
        ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
        if ids and ids[-1] == eos:  # a tokenizer that appends EOS itself (an export's): one EOS, ours, below
            ids, offsets = ids[:-1], offsets[:-1]
        if limit is None:
            on_top = sum(1 for _, end in offsets if end <= len(before)) if prefix_on_top else 0
            limit = max_length + on_top
        skip = sum(1 for _, end in offsets if end <= start)  # special tokens (offsets (0, 0)) first are not pooled
        if len(ids) + 1 <= limit or not text:
            return ids[:limit - 1] + [eos], min(skip, limit - 1), cut
        # Too long: keep the second copy's first `keep` tokens; each token cut shortens both copies.
        own = offsets[skip:]
        keep = max(len(own) - (len(ids) + 1 - limit + 1) // 2, 0)
        shorter = text[:own[keep - 1][1] - start] if keep else ""
        text, cut = (shorter if len(shorter) < len(text) else text[:-1]), True
