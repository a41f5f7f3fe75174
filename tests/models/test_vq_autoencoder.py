"""The VQ-f4 autoencoder against the reference outputs (``vq_f4_small.pt``) and the straight-through identity."""
from __future__ import annotations

import pytest
import torch

from common.models.vq_autoencoder import VQModelInterface
from tests.helpers.fixtures import load_fixture

TOL = dict(atol=1e-5, rtol=1e-5)
#: the random-weight decoder amplifies float32 rounding about 50-fold (a 1e-7 relative change of z moves its
#: output by 5e-6), so summation-order differences of the conv kernels on another CPU reach ~1.5e-5 at outputs
#: of magnitude 2; the reference code itself, run on this machine, differs from the fixture by 1.3e-5
DECODER_TOL = dict(atol=3e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def fixture():
    return load_fixture("vq_f4_small.pt")


def vq_kwargs(config: dict) -> dict:
    """Our VQModelInterface arguments from the reference kwargs (the training loss is not part of the model)."""
    return {k: v for k, v in config["vqmodelinterface_kwargs"].items() if k != "lossconfig"}


@pytest.fixture(scope="module")
def vq(fixture):
    model = VQModelInterface(**vq_kwargs(fixture["config"]))
    model.load_state_dict(fixture["state_dict"], strict=True)
    return model.eval()


def test_state_dict_layout_matches_reference(fixture, vq):
    ours = [(k, tuple(v.shape)) for k, v in vq.state_dict().items()]
    assert ours == [(k, tuple(v.shape)) for k, v in fixture["state_dict"].items()]
    assert sum(p.numel() for p in vq.parameters()) == 2_695_294
    assert vq.downsample_factor == 4


def test_encode_quantize_decode_match_reference(fixture, vq):
    out = fixture["outputs"]
    with torch.no_grad():
        z = vq.encode(fixture["inputs"]["x"])
        z_q, indices = vq.quantize(out["z"])
        decoded = vq.decode(out["z"])
        decoded_no_quant = vq.decode(out["z"], force_not_quantize=True)
    torch.testing.assert_close(z, out["z"], **TOL)
    assert torch.equal(indices, out["indices"])
    torch.testing.assert_close(z_q, out["z_quantized"], **TOL)
    torch.testing.assert_close(decoded, out["decoded"], **DECODER_TOL)
    torch.testing.assert_close(decoded_no_quant, out["decoded_no_quant"], **DECODER_TOL)


def test_quantize_picks_the_nearest_codebook_vector(fixture, vq):
    z = fixture["outputs"]["z"]
    codebook = vq.quantize.embedding.weight
    with torch.no_grad():
        z_q, indices = vq.quantize(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
    assert torch.equal(torch.cdist(flat.double(), codebook.double()).argmin(1).reshape(indices.shape), indices)
    torch.testing.assert_close(z_q, codebook[indices].permute(0, 3, 1, 2), atol=1e-6, rtol=0)


def test_straight_through_gradient_is_identity(fixture, vq):
    z = fixture["outputs"]["z"].clone().requires_grad_(True)
    weights = torch.randn(z.shape, generator=torch.Generator().manual_seed(0))
    (vq.quantize(z)[0] * weights).sum().backward()
    torch.testing.assert_close(z.grad, weights)


def test_decode_is_differentiable_through_the_quantizer(fixture, vq):
    z = fixture["outputs"]["z"].clone().requires_grad_(True)
    vq.decode(z).square().sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


@pytest.mark.parametrize("change, match", [
    ({"double_z": True}, "double_z"),
    ({"attn_resolutions": [16]}, "attn_resolutions"),
    ({"channels": 3}, "unknown keys"),
])
def test_unsupported_ddconfig_is_rejected(fixture, change, match):
    kwargs = vq_kwargs(fixture["config"])
    kwargs["ddconfig"] = {**kwargs["ddconfig"], **change}
    with pytest.raises(ValueError, match=match):
        VQModelInterface(**kwargs)
