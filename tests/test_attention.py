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
    texts = ["the cat", "a much longer sentence about a dog running in the park", "hi"]
    for pooling in ("eos", "mean", "multilayer"):
        m = EmbeddingModel(ModelConfig(backbone=tiny_backbones[arch], attention=attention, pooling=pooling,
                                       padding_side=side, dtype="float32",
                                       pooling_kwargs={"num_latents": 4, "num_heads": 4} if pooling == "multilayer" else {}))
        batched = m.encode(texts, batch_size=3)
        alone = [m.encode([t], batch_size=1)[0] for t in texts]
        for b, a in zip(batched, alone):
            assert abs(b - a).max() < 1e-4, (arch, attention, side, pooling)
