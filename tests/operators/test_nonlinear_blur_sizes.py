"""Non-linear blur at sizes that are not multiples of 128 (the 64-px demo, 16-px tests): replicate-padded to
N = 128·⌈n/128⌉, blurred by the network at N, cropped back. Checked against the operator built at N itself
(no padding there), with the small KernelWizard of tests/fixtures/nonlinear_blur_small.pt."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from common.operators import build_operator
from tests.helpers.fixtures import load_fixture

SMALL_NETWORK = dict(nf=8, kernel_dim=64, front_RBs=2, back_RBs=2, extractor_blocks=1)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("blur") / "small_kernel_wizard.pth"
    torch.save(load_fixture("nonlinear_blur_small.pt")["state_dict"], path)
    return str(path)


def blur(resolution: int, checkpoint: str):
    return build_operator("nonlinear_blur", resolution=resolution, checkpoint=checkpoint, network=SMALL_NETWORK)


@pytest.mark.parametrize("n", [64, 16])
def test_small_images_are_padded_to_128_and_cropped_back(checkpoint, n):
    x = torch.rand(1, 3, n, n, generator=torch.Generator().manual_seed(n)) * 2 - 1
    small, full = blur(n, checkpoint), blur(128, checkpoint)
    assert full.padding == (0, 0, 0, 0) and small.latent.shape == full.latent.shape  # z: 1×1 at N = 128
    before = (128 - n) // 2
    padded = F.pad(x, (before, 128 - n - before) * 2, mode="replicate")
    expected = full(padded)[..., before:before + n, before:before + n]
    out = small(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    # differentiable in x, as every operator
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(small(x).sum(), x)
    assert grad.shape == x.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_multiples_of_128_are_not_padded(checkpoint):
    assert blur(256, checkpoint).padding == (0, 0, 0, 0)
