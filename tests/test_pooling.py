import pytest
import torch

from poolattn.pooling import POOLERS, build_pooler, last_token_index, select_layers


def _states(B=2, T=5, D=16, L=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, T, D, generator=g) for _ in range(L + 1))


def test_last_token_index_left_and_right_padding():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_token_index(right).tolist() == [2, 4]
    assert last_token_index(left).tolist() == [4, 4]


def test_eos_mean_weighted_mean_values():
    hs = _states()
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    last = hs[-1]
    assert torch.allclose(build_pooler("eos", 16, 3)(hs, mask)[0], last[0, 2])
    assert torch.allclose(build_pooler("mean", 16, 3)(hs, mask)[0], last[0, :3].mean(0), atol=1e-6)
    w = torch.tensor([1.0, 2.0, 3.0]) / 6
    assert torch.allclose(build_pooler("weighted_mean", 16, 3)(hs, mask)[0], (last[0, :3] * w[:, None]).sum(0),
                          atol=1e-6)


def test_weighted_mean_same_under_left_padding():
    hs = _states()
    right = torch.tensor([[1, 1, 1, 0, 0]] * 2)
    left = torch.tensor([[0, 0, 1, 1, 1]] * 2)
    shifted = tuple(torch.roll(h, 2, dims=1) for h in hs)
    pool = build_pooler("weighted_mean", 16, 3)
    assert torch.allclose(pool(hs, right), pool(shifted, left), atol=1e-6)


@pytest.mark.parametrize("name", ["latent", "multilayer"])
def test_trainable_poolers_ignore_padding_and_have_gradients(name):
    hs = _states(B=1)
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    pool = build_pooler(name, 16, 3, num_latents=4, num_heads=2)
    out = pool(hs, mask)
    garbage = tuple(torch.cat([h[:, :3], 100 * torch.randn(1, 2, 16)], 1) for h in hs)
    assert torch.allclose(out, pool(garbage, mask), atol=1e-5)
    out.sum().backward()
    assert all(p.grad is not None for p in pool.parameters())


def test_multilayer_uses_every_selected_layer_and_normalises():
    hs = _states(B=1)
    mask = torch.ones(1, 5, dtype=torch.long)
    pool = build_pooler("multilayer", 16, 3, num_latents=4, num_heads=2)
    out = pool(hs, mask)
    assert torch.allclose(out.norm(dim=-1), torch.ones(1))
    noise = torch.randn(1, 5, 16)
    changed = (hs[0], hs[1] + noise, hs[2], hs[3])  # first decoder layer only
    assert not torch.allclose(out, pool(changed, mask))
    input_changed = (hs[0] + noise, *hs[1:])  # the input embeddings are not a layer
    assert torch.allclose(out, pool(input_changed, mask))


def test_multilayer_options():
    assert select_layers("all", 4) == [1, 2, 3, 4]
    assert select_layers("last:2", 4) == [3, 4]
    assert select_layers([1, -1], 4) == [1, 4]
    with pytest.raises(ValueError):
        select_layers([7], 4)
    pool = build_pooler("multilayer", 16, 4, layers="last:2", layer_embedding=False, num_latents=3, num_heads=4)
    assert pool.layer_embedding is None and pool.latents.shape == (3, 16)
    assert pool.get_config()["layers"] == "last:2"


def test_unknown_pooling_lists_valid_names():
    with pytest.raises(ValueError) as err:
        build_pooler("cls", 16, 3)
    for name in POOLERS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="bad options"):
        build_pooler("latent", 16, 3, num_latnets=3)
