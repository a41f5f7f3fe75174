"""The latent-diffusion UNet against the reference outputs (``ldm_unet_small.pt``) and closed forms of its
cross-attention blocks."""
from __future__ import annotations

import math

import pytest
import torch

from common.models.ldm_unet import CrossAttention, LDMUNet, SpatialTransformer
from tests.helpers.fixtures import load_fixture

TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def fixture():
    return load_fixture("ldm_unet_small.pt")


def unet_kwargs(config: dict) -> dict:
    """Our LDMUNet arguments from the reference UNetModel kwargs (``image_size`` is not a network parameter)."""
    return {k: v for k, v in config.items() if k != "image_size"}


@pytest.fixture(scope="module")
def unet(fixture):
    net = LDMUNet(**unet_kwargs(fixture["config"]["unet_model_kwargs"]))
    net.load_state_dict(fixture["state_dict"], strict=True)
    return net.eval()


def test_state_dict_layout_matches_reference(fixture, unet):
    ours = [(k, tuple(v.shape)) for k, v in unet.state_dict().items()]
    ref = [(k, tuple(v.shape)) for k, v in fixture["state_dict"].items()]
    assert ours == ref
    assert sum(p.numel() for p in unet.parameters()) == 1_164_259


def test_outputs_and_intermediates_match_reference(fixture, unet):
    seen = {}
    hooks = [unet.time_embed.register_forward_hook(lambda m, i, o: seen.__setitem__("time_embed", o)),
             unet.middle_block[-1].register_forward_hook(lambda m, i, o: seen.__setitem__("middle", o))]
    inp, out = fixture["inputs"], fixture["outputs"]
    with torch.no_grad():
        result = unet(inp["x"], inp["timesteps"])
        result_int = unet(inp["x"], inp["timesteps"].long())
    for h in hooks:
        h.remove()
    torch.testing.assert_close(result, out["out"], **TOL)
    torch.testing.assert_close(result_int, out["out_int_timesteps"], **TOL)
    torch.testing.assert_close(seen["time_embed"], out["time_embed"], **TOL)
    torch.testing.assert_close(seen["middle"], out["middle_block_out"], **TOL)


def test_one_timestep_broadcasts_over_the_batch(fixture, unet):
    x = fixture["inputs"]["x"]
    with torch.no_grad():
        shared = unet(x, torch.tensor([700.0]))
        per_sample = unet(x, torch.tensor([700.0, 700.0]))
    torch.testing.assert_close(shared, per_sample, **TOL)


def test_cross_attention_to_a_single_token_is_its_projected_value():
    """softmax over one key is 1, so every query receives to_out(W_v c)."""
    gen = torch.Generator().manual_seed(0)
    attn = CrossAttention(query_dim=8, heads=2, dim_head=4, context_dim=5)
    x = torch.randn(3, 7, 8, generator=gen)
    c = torch.randn(3, 1, 5, generator=gen)
    with torch.no_grad():
        out = attn(x, c)
        expected = attn.to_out(attn.to_v(c)).expand(-1, 7, -1)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)


def test_cross_attention_matches_explicit_softmax():
    """softmax(q kᵀ / sqrt(d)) v per head, written out (self-attention when no context is given)."""
    gen = torch.Generator().manual_seed(1)
    attn = CrossAttention(query_dim=6, heads=3, dim_head=2)
    x = torch.randn(2, 5, 6, generator=gen)
    with torch.no_grad():
        q, k, v = (lin(x).reshape(2, 5, 3, 2).transpose(1, 2) for lin in (attn.to_q, attn.to_k, attn.to_v))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(2), dim=-1)
        expected = attn.to_out((weights @ v).transpose(1, 2).reshape(2, 5, 6))
        torch.testing.assert_close(attn(x), expected, atol=1e-6, rtol=1e-6)


def test_spatial_transformer_is_residual_around_zero_projection():
    block = SpatialTransformer(channels=32, heads=1, depth=1, context_dim=4)
    torch.nn.init.zeros_(block.proj_out.weight)
    torch.nn.init.zeros_(block.proj_out.bias)
    x = torch.randn(2, 32, 3, 3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(block(x, torch.randn(2, 1, 4)), x)


def small_transformer_unet() -> LDMUNet:
    return LDMUNet(in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1, attention_resolutions=[2],
                   channel_mult=[1, 2], num_heads=1, use_spatial_transformer=True, context_dim=16)


def test_spatial_transformer_layout_follows_the_imagenet_ldm():
    keys = [k for k in small_transformer_unet().state_dict() if k.startswith("input_blocks.3.1.")]
    block = "input_blocks.3.1.transformer_blocks.0."
    assert keys[:4] == ["input_blocks.3.1.norm.weight", "input_blocks.3.1.norm.bias",
                        "input_blocks.3.1.proj_in.weight", "input_blocks.3.1.proj_in.bias"]
    order = [k[len(block):].split(".")[0] for k in keys if k.startswith(block)]
    assert list(dict.fromkeys(order)) == ["attn1", "ff", "attn2", "norm1", "norm2", "norm3"]
    assert keys[-2:] == ["input_blocks.3.1.proj_out.weight", "input_blocks.3.1.proj_out.bias"]


def test_context_conditions_the_output():
    torch.manual_seed(0)  # test-only: random initial weights
    net = small_transformer_unet().eval()
    for p in net.parameters():  # the reference zero-initialises output convs; make every layer matter
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(2, 3, 8, 8)
    c1, c2 = torch.randn(2, 1, 16), torch.randn(2, 1, 16)
    with torch.no_grad():
        out1, out1_again, out2 = net(x, torch.tensor([5.0, 9.0]), c1), net(x, torch.tensor([5.0, 9.0]), c1), \
            net(x, torch.tensor([5.0, 9.0]), c2)
    torch.testing.assert_close(out1, out1_again)
    assert (out1 - out2).abs().max() > 1e-4


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_heads=2, num_head_channels=16), "exactly one of num_heads"),
    (dict(num_head_channels=16, use_spatial_transformer=True), "context_dim"),
    (dict(num_head_channels=16, context_dim=8), "context_dim"),
    (dict(num_head_channels=16, channel_mult=[2, 2]), "channel_mult must start with 1"),
])
def test_invalid_configurations_are_rejected(kwargs, match):
    base = dict(in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1, attention_resolutions=[2],
                channel_mult=[1, 2])
    with pytest.raises(ValueError, match=match):
        LDMUNet(**{**base, **kwargs})
