"""The guided-diffusion UNet (common/models/adm_unet.py) against the reference key listings and adm_small.pt."""
from __future__ import annotations

import math

import pytest
import torch
import yaml

from common.models.adm_unet import AttentionBlock, create_adm_unet, timestep_embedding
from tests.helpers.fixtures import REPO, load_fixture


@pytest.fixture(scope="module")
def small():
    """adm_small.pt with the UNet built from its create_model kwargs and holding its weights."""
    d = load_fixture("adm_small.pt")
    unet = create_adm_unet(**d["config"]["create_model_kwargs"]).eval()
    unet.load_state_dict(d["state_dict"])
    return d, unet


@pytest.mark.parametrize("name, n_params", [("ffhq256", 93_563_910), ("imagenet256", 552_814_086)])
def test_state_dict_matches_reference_listing(name: str, n_params: int) -> None:
    config = yaml.safe_load((REPO / "configs" / "model" / f"{name}ddpm.yaml").read_text())["model_config"]
    with torch.device("meta"):  # shapes only: the ImageNet UNet would be 2.2 GB in float32
        unet = create_adm_unet(**config)
    ours = [(k, tuple(v.shape)) for k, v in unet.state_dict().items()]
    assert ours == load_fixture(f"adm_{name}.tsv")  # same keys, shapes and order
    assert sum(p.numel() for p in unet.parameters()) == n_params


def test_small_unet_matches_fixture(small) -> None:
    d, unet = small
    seen = {}
    hooks = [unet.time_embed.register_forward_hook(lambda m, i, o: seen.__setitem__("time_embed", o)),
             unet.middle_block.register_forward_hook(lambda m, i, o: seen.__setitem__("middle_block_out", o))]
    try:
        with torch.no_grad():
            out = unet(d["inputs"]["x"], d["inputs"]["timesteps"])
    finally:
        for h in hooks:
            h.remove()
    ref = d["outputs"]
    assert sum(p.numel() for p in unet.parameters()) == 1_422_278
    torch.testing.assert_close(out, ref["out"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(seen["time_embed"], ref["time_embed"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(timestep_embedding(d["inputs"]["timesteps"], 32), ref["timestep_embedding_sinusoid"],
                               atol=1e-6, rtol=1e-6)
    # |middle_block_out| reaches 7.2; the fixture's own float32 rounding is 1.1e-5 away from a float64
    # evaluation of the same weights and inputs, so 1e-5 cannot hold on a different CPU kernel order
    torch.testing.assert_close(seen["middle_block_out"], ref["middle_block_out"], atol=2e-5, rtol=1e-5)


def test_timestep_embedding_closed_form() -> None:
    t = torch.tensor([0.0, 3.5, 999.0])
    emb = timestep_embedding(t, 7)  # odd width: zero column appended
    half = 3
    freqs = torch.tensor([math.exp(-math.log(10000) * i / half) for i in range(half)])
    torch.testing.assert_close(emb[:, :3], torch.cos(t[:, None] * freqs))
    torch.testing.assert_close(emb[:, 3:6], torch.sin(t[:, None] * freqs))
    assert torch.equal(emb[:, 6], torch.zeros(3))


def _explicit_attention(block: AttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """softmax((q d^(-1/4))ᵀ (k d^(-1/4))) v per head, legacy channel grouping [q_h, k_h, v_h] per head."""
    b, c, h, w = x.shape
    flat = x.reshape(b, c, h * w)
    qkv = block.qkv(block.norm(flat)).reshape(b * block.num_heads, -1, h * w)
    d = c // block.num_heads
    q, k, v = qkv[:, :d], qkv[:, d:2 * d], qkv[:, 2 * d:]
    weight = torch.einsum("bct,bcs->bts", q * d ** -0.25, k * d ** -0.25).float().softmax(-1)
    a = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, h * w)
    return (flat + block.proj_out(a)).reshape(b, c, h, w)


def test_attention_matches_explicit_legacy_formula_and_new_order() -> None:
    gen = torch.Generator().manual_seed(0)
    block = AttentionBlock(64, num_heads=4, num_head_channels=16).eval()
    for p in block.parameters():
        p.data = torch.randn(p.shape, generator=gen) * 0.2
    x = torch.randn(2, 64, 5, 6, generator=gen)
    with torch.no_grad():
        out = block(x)
        torch.testing.assert_close(out, _explicit_attention(block, x), atol=1e-5, rtol=1e-5)
        # the new order groups qkv as [q_1..q_H, k_1..k_H, v_1..v_H]: permuting the qkv rows gives the same block
        new = AttentionBlock(64, num_heads=4, num_head_channels=16, legacy_order=False).eval()
        new.load_state_dict(block.state_dict())
        rows = torch.arange(3 * 64).reshape(4, 3, 16).transpose(0, 1).reshape(-1)  # new row j <- legacy row
        new.qkv.weight.copy_(block.qkv.weight[rows])
        new.qkv.bias.copy_(block.qkv.bias[rows])
        torch.testing.assert_close(new(x), out, atol=1e-5, rtol=1e-5)
        assert not torch.equal(rows, torch.arange(3 * 64))


def test_one_timestep_broadcasts_over_batch(small) -> None:
    d, unet = small
    x = d["inputs"]["x"]
    with torch.no_grad():
        torch.testing.assert_close(unet(x, torch.tensor([144.5])), unet(x, torch.tensor([144.5, 144.5])))
        with pytest.raises(ValueError, match="timesteps"):
            unet(x, torch.tensor([1.0, 2.0, 3.0]))


def test_gradients_reach_the_input(small) -> None:
    _, unet = small
    x = torch.zeros(1, 3, 32, 32, requires_grad=True)
    unet(x, torch.tensor([500])).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_create_model_arguments() -> None:
    base = dict(image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2", num_head_channels=16)
    with torch.device("meta"):
        as_int = create_adm_unet(**base, attention_resolutions=16)
        as_str = create_adm_unet(**base, attention_resolutions="16")
        neither = create_adm_unet(**base, attention_resolutions="8")  # rate 4 does not exist with 2 levels
        assert "input_blocks.3.1.qkv.weight" in as_int.state_dict()  # attention at rate 2 (16×16 maps)
        assert as_int.state_dict().keys() == as_str.state_dict().keys()
        assert not any("qkv" in k for k in neither.state_dict() if not k.startswith("middle_block"))
        default = create_adm_unet(image_size=64, num_channels=32, num_res_blocks=1)
        assert default.input_blocks[-1][0].in_layers[2].out_channels == 4 * 32  # default (1,2,3,4) at 64 px
        learn = create_adm_unet(**base, learn_sigma=True)
        assert learn.out[2].out_channels == 6
        classes = create_adm_unet(**base, class_cond=True)
        assert tuple(classes.label_emb.weight.shape) == (1000, 128)
    with pytest.raises(ValueError, match="image_size 48"):
        create_adm_unet(image_size=48, num_channels=32, num_res_blocks=1)
    with pytest.raises(ValueError, match="use_fp16"):
        create_adm_unet(**base, use_fp16=True)
    with pytest.raises(ValueError, match="num_head_channels 24"):
        create_adm_unet(**{**base, "num_head_channels": 24})


def test_class_conditional_needs_labels() -> None:
    gen = torch.Generator().manual_seed(1)
    unet = create_adm_unet(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2",
                           class_cond=True, attention_resolutions="8").eval()
    unet.label_emb.weight.data = torch.randn(unet.label_emb.weight.shape, generator=gen)
    x, t = torch.randn(2, 3, 16, 16, generator=gen), torch.tensor([3, 900])
    with torch.no_grad():
        a = unet(x, t, torch.tensor([1, 2]))
        b = unet(x, t, torch.tensor([5, 2]))
    assert not torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1])
    with pytest.raises(ValueError, match="class labels"):
        unet(x, t)
