"""Every task operator against the reference outputs in tests/fixtures (operators.pt, nonlinear_blur_small.pt);
the blurs with both ``method`` settings (``direct``: the reference's dense correlation, ``fast``: its separable / FFT
form), at the same tolerance."""
from __future__ import annotations

import pytest
import torch

from common.models.checkpoints import CheckpointError
from common.operators import build_operator
from common.operators.convolution import METHODS
from common.operators.down_sampling import resize_matrix
from common.operators.gaussian_blur import gaussian_kernel
from common.operators.kernel_wizard import KernelWizard
from common.operators.nonlinear_blur import fixed_latent
from tests.helpers.fixtures import load_fixture

TOL = dict(atol=1e-5, rtol=1e-5)
SMALL_NETWORK = dict(nf=8, kernel_dim=64, front_RBs=2, back_RBs=2, extractor_blocks=1)


@pytest.fixture(scope="module")
def reference():
    return load_fixture("operators.pt")


def build_reference(task: dict, method: str | None = None):
    params = {"resolution": 256, **task["params"], **({} if method is None else {"method": method})}
    return build_operator(**params)


BLURS = ("gaussian_blur", "motion_blur")


@pytest.mark.parametrize("task, method", [(task, None) for task in ("down_sampling", "inpainting",
                                                                     "inpainting_rand", "phase_retrieval", "hdr")]
                         + [(task, method) for task in BLURS for method in METHODS])
def test_forward_matches_reference(reference, task, method):
    entry = reference["tasks"][task]
    op = build_reference(entry, method)
    if "mask" in entry:
        op.set_state({"mask": entry["mask"][0][None]})       # (B=1, 1, H, W)
    if task == "motion_blur":
        op.set_state({"kernel": entry["kernel"][None]})
    out = op(reference["x"])
    assert out.shape == entry["Ax"].shape
    torch.testing.assert_close(out, entry["Ax"], **TOL)


def test_exact_cases(reference):
    x = reference["x"]
    inpaint = reference["tasks"]["inpainting"]
    op = build_reference(inpaint)
    op.set_state({"mask": inpaint["mask"][0][None]})
    assert torch.equal(op(x), inpaint["Ax"])
    assert torch.equal(build_reference(reference["tasks"]["hdr"])(x), reference["tasks"]["hdr"]["Ax"])


def test_resizer_taps_match_reference(reference):
    entry = reference["tasks"]["down_sampling"]
    weights, fov = entry["resizer_weights_dim_last"], entry["resizer_field_of_view_dim_last"]
    expected = torch.zeros(64, 256, dtype=torch.float64).scatter_add_(1, fov, weights.double())
    torch.testing.assert_close(resize_matrix(256, 4), expected, atol=1e-7, rtol=0)
    # the operator's stored buffer is the same matrix in float32
    torch.testing.assert_close(build_reference(entry).matrix, expected.float(), atol=1e-7, rtol=0)


def test_gaussian_kernel_matches_reference(reference):
    entry = reference["tasks"]["gaussian_blur"]
    torch.testing.assert_close(gaussian_kernel(61, 3.0), entry["kernel_float64"], atol=1e-15, rtol=0)
    assert torch.equal(build_reference(entry).kernel, entry["kernel"])


@pytest.mark.parametrize("method", METHODS)
def test_motion_blur_conv_case(method):
    case = load_fixture("motion_kernels.pt")["operator_conv_case"]
    op = build_operator("motion_blur", resolution=64, kernel_size=61, intensity=0.5, method=method)
    op.set_state({"kernel": case["kernel"][None]})
    torch.testing.assert_close(op(case["x"]), case["y"], **TOL)


def test_box_mask_fixture_facts(reference):
    mask = reference["tasks"]["inpainting"]["mask"][0, 0]
    rows, cols = torch.nonzero(~mask, as_tuple=True)
    assert (rows.min().item(), rows.max().item() + 1) == tuple(reference["tasks"]["inpainting"]["box_rows"])
    assert (cols.min().item(), cols.max().item() + 1) == tuple(reference["tasks"]["inpainting"]["box_cols"])


# ----------------------------------------------------------------------------------- nonlinear blur
@pytest.fixture(scope="module")
def small_blur():
    return load_fixture("nonlinear_blur_small.pt")


@pytest.fixture
def small_operator(small_blur, tmp_path):
    path = tmp_path / "small_kernel_wizard.pth"
    torch.save(small_blur["state_dict"], path)
    return build_operator("nonlinear_blur", resolution=256, checkpoint=str(path), network=SMALL_NETWORK)


def test_nonlinear_blur_small_golden(small_blur, small_operator):
    assert torch.equal(small_operator.latent, small_blur["inputs"]["kernel_latent"])
    out = small_operator(small_blur["inputs"]["x"])
    torch.testing.assert_close(out, small_blur["outputs"]["y"], **TOL)


def test_nonlinear_blur_small_gradient(small_blur, small_operator):
    x = small_blur["inputs"]["x"].clone().requires_grad_(True)
    loss = small_operator(x).pow(2).sum()
    (grad,) = torch.autograd.grad(loss, x)
    ref = small_blur["grad_check"]
    assert loss.item() == pytest.approx(ref["loss"], rel=1e-5)
    assert grad.sum().item() == pytest.approx(ref["grad_sum"], rel=1e-4)
    assert grad.abs().sum().item() == pytest.approx(ref["grad_abs_sum"], rel=1e-5)
    torch.testing.assert_close(grad[:, :, :8, :8], ref["grad_corner"], atol=1e-4, rtol=1e-4)
    assert not any(p.requires_grad for p in small_operator.net.parameters())


def test_kernel_wizard_network_cases(small_blur):
    net = KernelWizard(**SMALL_NETWORK).eval()
    net.load_state_dict(small_blur["state_dict"])
    case = small_blur["extra_network_case_128"]
    with torch.no_grad():
        torch.testing.assert_close(net.adapt_kernel(case["x01"], case["latent"]), case["adaptKernel_out"], **TOL)
        first, second = net.extract_kernel((small_blur["inputs"]["x"] + 1) / 2,  # the fixture's x01, exactly
                                            (small_blur["outputs"]["y"] + 1) / 2)
    torch.testing.assert_close(first, small_blur["extra_kernel_extractor"]["first_half"], **TOL)
    torch.testing.assert_close(second, small_blur["extra_kernel_extractor"]["second_half"], **TOL)


def test_fixed_latent_is_the_reference_latent(small_blur):
    assert torch.equal(fixed_latent(512, 2, 2), small_blur["inputs"]["kernel_latent_full"])
    assert torch.equal(fixed_latent(64, 2, 2), small_blur["inputs"]["kernel_latent"])


def test_full_network_keys_match_checkpoint_listing():
    with torch.device("meta"):
        net = KernelWizard()
    own = [(k, tuple(v.shape)) for k, v in net.state_dict().items()]
    assert own == load_fixture("nonlinear_blur_keys.tsv")
    assert sum(p.numel() for p in net.parameters()) == 115_265_475


def test_small_network_keys_match_fixture(small_blur):
    net = KernelWizard(**SMALL_NETWORK)
    assert list(net.state_dict()) == list(small_blur["state_dict"])
    assert sum(p.numel() for p in net.parameters()) == small_blur["param_count"]


def test_missing_checkpoint_names_path_and_download(tmp_path):
    missing = tmp_path / "nowhere" / "GOPRO_wVAE.pth"
    with pytest.raises(CheckpointError) as err:
        build_operator("nonlinear_blur", resolution=256, checkpoint=str(missing))
    assert str(missing) in str(err.value) and "download.sh" in str(err.value)


def test_wrong_checkpoint_is_refused(small_blur, tmp_path):
    path = tmp_path / "small.pth"
    torch.save(small_blur["state_dict"], path)
    with pytest.raises(CheckpointError, match="does not fit"):
        build_operator("nonlinear_blur", resolution=256, checkpoint=str(path))   # full-size network
