"""Tiny random decoders of several architectures, with a locally trained tokenizer, for fast tests (no hub)."""
from __future__ import annotations

from pathlib import Path

_CORPUS = [
    "the quick brown fox jumps over the lazy dog", "a man is playing a guitar", "two dogs run in the park",
    "what is the capital of france", "paris is the capital of france", "embedding models map text to vectors",
    "the cat sat on the mat", "a woman is slicing an onion", "how do i reset my password", "0123456789 .,;:!?",
]

ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma3")


def tiny_tokenizer():
    """Byte-level BPE trained on a few sentences: handles any text, small vocabulary."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(_CORPUS * 5, vocab_size=400, min_frequency=1,
                            special_tokens=["<pad>", "<s>", "</s>"])
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")


def tiny_config(arch: str, vocab_size: int, hidden_size: int = 64, num_layers: int = 3):
    import transformers as tf

    common = dict(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                  num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    configs = {
        "llama": lambda: tf.LlamaConfig(**common),
        "mistral": lambda: tf.MistralConfig(**common, sliding_window=None),
        "qwen2": lambda: tf.Qwen2Config(**common),
        "qwen3": lambda: tf.Qwen3Config(**common, head_dim=hidden_size // 4),
        "gemma": lambda: tf.GemmaConfig(**common, head_dim=hidden_size // 4),
        # Gemma 3's hybrid cache: sliding-window layers around a global one, the window shorter than an instruction
        "gemma3": lambda: tf.Gemma3TextConfig(
            **common, head_dim=hidden_size // 4, sliding_window=6,
            layer_types=(["sliding_attention", "full_attention"] * num_layers)[:num_layers]),
    }
    if arch not in configs:
        raise ValueError(f"unknown tiny architecture {arch!r}; valid: {', '.join(configs)}")
    return configs[arch]()


def tiny_backbone(folder: str | Path, arch: str = "llama", hidden_size: int = 64, num_layers: int = 3,
                  seed: int = 0) -> str:
    """Write a random tiny causal LM of `arch` with its tokenizer to `folder`; return the path (a backbone spec)."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    if (folder / "config.json").exists():
        return str(folder)
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, len(tokenizer), hidden_size, num_layers))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)
