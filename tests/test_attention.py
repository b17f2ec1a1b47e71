import pytest
import torch

from poolattn import EmbeddingModel, ModelConfig
from poolattn.testing import ARCHS


def _states(model, ids):
    mask = torch.ones_like(ids)
    with torch.no_grad():
        return model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state


@pytest.mark.parametrize("arch", ARCHS)
def test_bidirectional_lets_later_tokens_change_earlier_states(tiny_backbones, arch):
    ids = torch.tensor([[5, 17, 33, 41, 60, 72]])
    changed = ids.clone()
    changed[0, -1] = 99
    for mode, should_change in (("causal", False), ("bidirectional", True)):
        m = EmbeddingModel(ModelConfig(backbone=tiny_backbones[arch], attention=mode, dtype="float32"))
        diff = (_states(m, ids)[0, :-1] - _states(m, changed)[0, :-1]).abs().max().item()
        assert (diff > 1e-4) == should_change, (arch, mode, diff)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_does_not_change_embeddings(tiny_backbones, arch, attention, side):
    """Every design's pooler (the paper's 2-5 included) gives a text the same vector padded in a batch or alone."""
    from poolattn.pooling import build_pooler

    texts = ["the cat", "a much longer sentence about a dog running in the park", "hi"]
    m = EmbeddingModel(ModelConfig(backbone=tiny_backbones[arch], attention=attention, pooling="eos",
                                   padding_side=side, dtype="float32"))
    small = {"num_latents": 4, "num_heads": 4}
    for pooling, options in [("eos", {}), ("mean", {}), ("latent", {**small, "tokens": "last"}),
                             ("latent", {**small, "tokens": "all"}), ("multilayer", {**small, "tokens": "last"}),
                             ("multilayer", {**small, "tokens": "mean"}), ("latent", {**small, "preset": "nvembed"})]:
        m.pooler = build_pooler(pooling, m.backbone.config.hidden_size, m.backbone.config.num_hidden_layers,
                                **options).eval()
        batched = m.encode(texts, batch_size=3)
        alone = [m.encode([t], batch_size=1)[0] for t in texts]
        for b, a in zip(batched, alone):
            assert abs(b - a).max() < 1e-4, (arch, attention, side, pooling, options)


def _installed_implementations() -> list[str]:
    import importlib.util

    impls = ["sdpa", "eager"]
    if importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available():
        impls.append("flash_attention_2")
    return impls


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_attention_switch_is_the_same_under_every_implementation(tiny_backbones, arch, attention):
    """The switch acts through the mask and the modules' is_causal flag: eager (a materialised mask), SDPA (implicit
    causal flag or mask) and flash-attention 2 where installed must all attend to the same tokens."""
    texts = ["the cat", "a much longer sentence about a dog running in the park", "hi"]
    out = {}
    for impl in _installed_implementations():
        on_cuda = impl == "flash_attention_2"
        m = EmbeddingModel(ModelConfig(backbone=tiny_backbones[arch], attention=attention, pooling="mean",
                                       attn_implementation=impl, dtype="bfloat16" if on_cuda else "float32"),
                           device="cuda" if on_cuda else "cpu")
        assert m.backbone.config._attn_implementation == impl
        out[impl] = m.encode(texts, batch_size=3)
    for impl, emb in out.items():
        tol = 2e-2 if impl == "flash_attention_2" else 1e-5
        assert abs(emb - out["eager"]).max() < tol, (arch, attention, impl)


def test_unknown_attn_implementation_is_refused(tiny_llama):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="attn_implementation"):
        ModelConfig(backbone=tiny_llama, attn_implementation="flash")
