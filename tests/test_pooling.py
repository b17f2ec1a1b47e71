import pytest
import torch

from poolattn.pooling import POOLERS, build_pooler, is_trainable, last_token_index, select_layers


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


@pytest.mark.parametrize("name", list(POOLERS))
def test_trainable_says_whether_the_pooler_has_weights(name):
    pool = build_pooler(name, 16, 3)
    assert pool.trainable is is_trainable(name) is POOLERS[name].trainable
    assert pool.trainable == any(True for _ in pool.parameters())


def test_is_trainable_names_an_unknown_pooling():
    assert [n for n in POOLERS if is_trainable(n)] == ["latent", "multilayer"]
    with pytest.raises(ValueError, match="unknown pooling 'lattent'; valid: eos"):
        is_trainable("lattent")


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
    with pytest.raises(ValueError, match="takes no options.*num_latnets.*valid: .*num_latents"):
        build_pooler("latent", 16, 3, num_latnets=3)
    with pytest.raises(ValueError, match="unknown pooler preset 'nv'; valid: tang2024, nvembed, poolattn0"):
        build_pooler("latent", 16, 3, preset="nv")


# ---- the families' definitions, pinned ------------------------------------------------------------------------------
def _reference_block(block, context, query):
    """The reference codes' pooling block restated with explicit matmuls, on our module's weights.

    Tang & Yang (PoolingAndAttn @57791d5, PerceiverResampler.forward): x = latents; x = cross_attn(hiddens,
    context=x) + x, where PreNorm normalises both sides and Attention takes q = to_q(latents), k, v = to_kv(hiddens);
    x = cross_ff(x) + x; mean over latents; L2. NV-Embed (LatentAttentionModel.forward): hiddens = cross_attn(hiddens,
    context=latents) + hiddens with q = to_q(hiddens), k, v = to_kv(latents); hiddens = cross_ff(hiddens) + hiddens;
    masked mean over tokens; L2. Both: softmax(q k^T / sqrt(head_dim)) v per head, to_out, GEGLU x * gelu(gates).
    """
    c, ff = block.cross, block.ff
    B = context.shape[0]
    lat = block.latents.unsqueeze(0).expand(B, -1, -1)
    qside, kvside = (lat, context) if query == "latents" else (context, lat)
    q = c.to_q(c.norm_q(qside))
    k, v = c.to_kv(c.norm_kv(kvside)).chunk(2, dim=-1)
    h = c.num_heads
    q, k, v = (t.unflatten(-1, (h, -1)).transpose(1, 2) for t in (q, k, v))
    att = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1) @ v
    x = c.to_out(att.transpose(1, 2).flatten(2)) + qside
    a, gates = ff.proj_in(ff.norm(x)).chunk(2, dim=-1)
    x = ff.proj_out(a * torch.nn.functional.gelu(gates)) + x
    return torch.nn.functional.normalize(x.mean(1), dim=-1)


def test_tang2024_latent_pooler_is_the_reference_perceiver():
    hs = _states(B=2, T=5, D=16)
    mask = torch.ones(2, 5, dtype=torch.long)
    pool = build_pooler("latent", 16, 3, preset="tang2024", tokens="all", num_latents=6, num_heads=4).eval()
    assert pool.block.cross.to_out.bias is None and pool.options["ff_mult"] == 4 and pool.options["head_dim"] == 8
    assert torch.allclose(pool(hs, mask), _reference_block(pool.block, hs[-1], "latents"), atol=1e-5)


def test_nvembed_pooler_is_the_reference_latent_attention():
    hs = _states(B=2, T=5, D=16)
    mask = torch.ones(2, 5, dtype=torch.long)
    pool = build_pooler("latent", 16, 3, preset="nvembed", num_latents=6, num_heads=2).eval()
    assert pool.options["query"] == "tokens" and pool.options["head_dim"] == 16  # NV-Embed: head width = hidden
    assert torch.allclose(pool(hs, mask), _reference_block(pool.block, hs[-1], "tokens"), atol=1e-5)


def test_tang2024_multilayer_is_the_reference_with_layer_embedding():
    hs = _states(B=2, T=5, D=16, L=3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    pool = build_pooler("multilayer", 16, 3, preset="tang2024", tokens="mean", num_latents=6, num_heads=4).eval()
    means = torch.stack([(h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True) for h in hs[1:]], 1)
    expected = _reference_block(pool.block, means + pool.layer_embedding.weight, "latents")
    assert torch.allclose(pool(hs, mask), expected, atol=1e-5)


def test_design2_depends_only_on_the_last_tokens_last_layer_state():
    hs = _states(B=1, T=5)
    mask = torch.tensor([[1, 1, 1, 1, 0]])  # last real token at 3
    pool = build_pooler("latent", 16, 3, tokens="last", num_latents=4, num_heads=2)
    out = pool(hs, mask)
    other = tuple(h.clone() for h in hs)
    for h in other[:-1]:
        h.normal_()  # every earlier layer changed
    other[-1][:, :3].normal_()  # and every other position of the last layer
    assert torch.allclose(out, pool(other, mask), atol=1e-6)
    other[-1][:, 3] += torch.randn(16)  # (a constant shift would vanish in the LayerNorm)
    assert not torch.allclose(out, pool(other, mask), atol=1e-4)


def test_design3_depends_only_on_each_layers_last_token_state():
    hs = _states(B=1, T=5)
    mask = torch.tensor([[0, 1, 1, 1, 1]])  # left padded: last token at 4
    pool = build_pooler("multilayer", 16, 3, tokens="last", num_latents=4, num_heads=2)
    out = pool(hs, mask)
    other = tuple(h.clone() for h in hs)
    for h in other:
        h[:, :4].normal_()
    other[0][:, 4].normal_()  # the embedding output is not a layer
    assert torch.allclose(out, pool(other, mask), atol=1e-6)
    for layer in (1, 2, 3):
        changed = tuple(h.clone() for h in hs)
        changed[layer][:, 4] += torch.randn(16)
        assert not torch.allclose(out, pool(changed, mask), atol=1e-4), layer


def test_design4_same_vector_padded_or_alone():
    hs = _states(B=1, T=3)
    pool = build_pooler("latent", 16, 3, tokens="all", num_latents=4, num_heads=2)
    alone = pool(hs, torch.ones(1, 3, dtype=torch.long))
    for left in (False, True):
        junk = [100 * torch.randn(1, 2, 16) for _ in hs]
        padded = tuple(torch.cat([j, h] if left else [h, j], 1) for h, j in zip(hs, junk))
        mask = torch.tensor([[0, 0, 1, 1, 1]] if left else [[1, 1, 1, 0, 0]])
        assert torch.allclose(alone, pool(padded, mask), atol=1e-5)


def test_design5_uses_per_layer_masked_means():
    hs = _states(B=1, T=5)
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    pool = build_pooler("multilayer", 16, 3, tokens="mean", num_latents=4, num_heads=2)
    flat = tuple(h[:, :3].mean(1, keepdim=True).expand(-1, 5, -1) for h in hs)  # every token = its layer's mean
    assert torch.allclose(pool(hs, mask), pool(flat, mask), atol=1e-5)
    assert torch.allclose(pool(hs, mask), pool(tuple(h[:, [2, 0, 1, 3, 4]] for h in hs), mask), atol=1e-5)


def test_pooler_parameters_at_mistral_7b_match_the_reference():
    """tang2024 at Mistral-7B (h 4096, 32 layers): the reference's PerceiverResampler has 1,278,406,656 parameters
    (to_q 4096x65536, to_kv 4096x131072, to_out 65536x4096, two LayerNorms, GEGLU 4096->32768->4096 with biases
    and its LayerNorm, 768x4096 latents, 32x4096 layer embedding)."""
    with torch.device("meta"):
        multi = build_pooler("multilayer", 4096, 32, preset="tang2024")
        last = build_pooler("latent", 4096, 32, preset="tang2024")
        nv = build_pooler("latent", 4096, 32, preset="nvembed")
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(multi) == 1_278_406_656
    assert count(last) == 1_278_406_656 - 32 * 4096
    # NV-Embed: 8 heads x 4096 wide (inner 32768), 512 latents
    assert nv.block.cross.to_q.weight.shape == (32768, 4096) and nv.latents.shape == (512, 4096)


def test_head_width_rule_and_explicit_override():
    pool = build_pooler("multilayer", 576, 30)
    assert pool.get_config()["head_dim"] == 288 and pool.get_config()["num_heads"] == 32
    assert build_pooler("multilayer", 576, 30, head_dim=18).block.cross.to_q.weight.shape == (32 * 18, 576)
    assert build_pooler("multilayer", 576, 30, preset="poolattn0").get_config()["head_dim"] == 72
    with pytest.raises(ValueError, match="query='latents'"):
        build_pooler("multilayer", 16, 3, preset="nvembed")
    with pytest.raises(ValueError, match="tokens must be 'last' or 'mean'"):
        build_pooler("multilayer", 16, 3, tokens="all")


def test_mean_over_chosen_layers():
    hs = _states()
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    pool = build_pooler("mean", 16, 3, layers=[1, -1])
    assert pool.needs_all_layers and pool.get_config() == {"layers": [1, -1]}
    want = (hs[1][0, :3].mean(0) + hs[3][0, :3].mean(0)) / 2
    assert torch.allclose(pool(hs, mask)[0], want, atol=1e-6)
    assert not build_pooler("mean", 16, 3).needs_all_layers
    with pytest.raises(ValueError, match="out of range"):
        build_pooler("mean", 16, 3, layers=[4])


def test_mean_without_layers_is_the_last_layer_mean_bit_for_bit():
    """The default mean pooler is the masked token mean of the last layer alone, to the bit (left and right padding,
    an all-pad row), and asks for no other layer: the layers option changes nothing for designs that omit it."""
    hs = _states(B=3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [0, 0, 0, 0, 0]])
    pool = build_pooler("mean", 16, 3)
    m = mask.float().unsqueeze(-1)
    want = (hs[-1].float() * m).sum(1) / m.sum(1).clamp(min=1.0)  # the mean pooler before the layers option
    assert torch.equal(pool(hs, mask), want)
    assert torch.equal(pool(hs[-1:], mask), want)  # the last layer's states alone suffice
    assert pool.get_config() == {} and not pool.needs_all_layers
    assert torch.equal(build_pooler("mean", 16, 3, layers=[-1])(hs, mask), want)


def test_mean_over_a_layer_range_averages_exactly_those_layers():
    hs = _states(B=2, L=5)
    mask = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 1, 1, 1]])

    def by_hand(layers):  # per row: each layer's mean over its real tokens, then the mean over the layers
        rows = []
        for b in range(2):
            real = mask[b].bool()
            rows.append(torch.stack([hs[i][b, real].mean(0) for i in layers]).mean(0))
        return torch.stack(rows)

    for spec, layers in [("1..3", [1, 2, 3]), ("0..1", [0, 1]), ("-2..-1", [4, 5]), ("2..2", [2]),
                         ([0, -1], [0, 5])]:
        pool = build_pooler("mean", 16, 5, layers=spec)
        assert pool.needs_all_layers and pool.get_config() == {"layers": spec}
        assert torch.allclose(pool(hs, mask), by_hand(layers), atol=1e-6), spec
    pool = build_pooler("mean", 16, 5, layers="1..3")
    out = pool(hs, mask)
    noise = torch.randn(2, 5, 16)
    outside = tuple(h + noise if i in (0, 4, 5) else h for i, h in enumerate(hs))
    assert torch.equal(pool(outside, mask), out)  # the embeddings and layers 4-5 do not enter
    inside = tuple(h + noise if i == 2 else h for i, h in enumerate(hs))
    assert not torch.allclose(pool(inside, mask), out)
    padded = tuple(torch.where(mask.bool()[..., None], h, torch.full_like(h, 1e4)) for h in hs)
    assert torch.allclose(pool(padded, mask), out, atol=1e-5)  # padding never enters
    with pytest.raises(ValueError, match="expects 6 hidden states"):
        pool(hs[-1:], mask)


def test_layer_ranges_negative_indices_and_errors_name_the_layer_count():
    assert select_layers("1..8", 30) == list(range(1, 9))
    assert select_layers("-3..-1", 30) == [28, 29, 30]
    assert select_layers("0..2", 30) == [0, 1, 2] and select_layers([-31], 30) == [0]  # -31: the embeddings
    assert select_layers("-30..1", 30) == [1]
    for bad in ([31], [-32], "1..31", "-32..-1"):
        with pytest.raises(ValueError, match="out of range: the model has 30 layers"):
            select_layers(bad, 30)
    with pytest.raises(ValueError, match="range '5..2' is empty"):
        select_layers("5..2", 30)
    for bad in ("1-8", "1..", "a..b", "1..2..3"):
        with pytest.raises(ValueError, match="is not 'all', 'last:K', a range 'A..B'"):
            select_layers(bad, 30)
    with pytest.raises(ValueError, match="the model has 3 layers"):
        build_pooler("mean", 16, 3, layers="1..4")


@pytest.mark.parametrize("name,kw", [("multilayer", {"tokens": "mean"}), ("multilayer", {"tokens": "last"}),
                                     ("latent", {"tokens": "all"})])
def test_mean_init_starts_as_the_mean_of_standardised_context(name, kw):
    """init='mean': step 0 is the mean of the (layer-norm standardised) context vectors, and every parameter
    that shapes the function from there gets a gradient."""
    from torch.nn.functional import layer_norm, normalize

    from poolattn.pooling import last_token_index, masked_mean

    hs = _states(B=2, D=16, L=3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    pool = build_pooler(name, 16, 3, num_latents=4, num_heads=2, head_dim=8, init="mean", **kw)
    rows = torch.arange(2)
    if name == "multilayer" and kw["tokens"] == "mean":
        ctx, m = torch.stack([masked_mean(hs[i], mask) for i in (1, 2, 3)], 1), torch.ones(2, 3)
    elif name == "multilayer":
        ctx, m = torch.stack([hs[i][rows, last_token_index(mask)] for i in (1, 2, 3)], 1), torch.ones(2, 3)
    else:
        ctx, m = hs[-1], mask.float()
    want = normalize((layer_norm(ctx, (16,)) * m[..., None]).sum(1) / m.sum(1, keepdim=True), dim=-1)
    out = pool(hs, mask)
    assert torch.allclose(out, want, atol=1e-5)
    assert pool.get_config()["init"] == "mean"
    out.pow(3).sum().backward()
    assert pool.block.latents.grad.abs().sum() > 0 and pool.block.ff.proj_out.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="inner width"):
        build_pooler(name, 16, 3, num_latents=4, num_heads=2, head_dim=4, init="mean", **kw)
    with pytest.raises(ValueError, match="init must be"):
        build_pooler(name, 16, 3, init="zeros", **kw)
