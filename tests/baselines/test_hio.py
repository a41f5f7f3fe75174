r"""HIO (baselines/hio.py): noiseless recovery up to the phase-retrieval ambiguities, no network calls, phase retrieval
only, batch invariance, settings and the CLI.

With a tight support (the central n × n block) and the [0, 1] range, the Fourier magnitude of a real image fixes it up
to the conjugate flip g(−r) (a 180° rotation about the grid's centre, which for the even padded grid of the centred
DFT is torch.flip followed by a one-pixel roll). A noiseless synthetic image must be recovered as one of these.
"""
from __future__ import annotations

import pytest
import torch

from baselines.hio import HIO, centred_fft, centred_ifft
from common.errors import SettingError
from common.models.gaussian import GaussianPrior
from common.operators import build_operator
from common.random import make_generator
from common.sampling import unsupported
from common.sampling.counting import count_calls
from tests.helpers.baseline_cli import run_and_resume
from tests.helpers.gaussian_cases import assert_copies_batch_invariant
from tests.helpers.latent_baseline_cli import demo_prior

pytestmark = pytest.mark.usefixtures("one_thread")

RES = 16


def synthetic(resolution: int = RES) -> torch.Tensor:
    """A [−1, 1] test image: two blocks and a disc of different intensities per channel (no symmetry)."""
    r = torch.arange(resolution, dtype=torch.float32)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    img = torch.zeros(3, resolution, resolution)
    img[0, 2:7, 3:12] = 0.8
    img[1][(yy - 10) ** 2 + (xx - 5) ** 2 < 12] = 0.9
    img[2, 9:14, 8:15] = 0.6
    img = img + 0.15 * torch.sin(0.7 * xx + 0.3 * yy)[None].clamp(min=0)
    return (2 * img.clamp(0, 1) - 1)[None]


def ambiguity_error(out: torch.Tensor, truth: torch.Tensor, pad: int) -> float:
    """Largest over channels of the smallest mean |out − T(truth)| ([0, 1] units) over T: the identity and the conjugate
    flip on the padded grid, each with a translation of at most one pixel (a flip of the centred even grid moves the
    support by one pixel, so HIO may settle on it shifted back)."""
    side = truth.shape[-1]
    grid = torch.nn.functional.pad(truth * 0.5 + 0.5, (pad,) * 4)
    flipped = torch.flip(grid, dims=(-2, -1))
    candidates = [torch.roll(g, shifts=(dy, dx), dims=(-2, -1)) for g in (grid, flipped)
                  for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    out01 = out * 0.5 + 0.5
    errors = torch.stack([(out01 - c[..., pad:pad + side, pad:pad + side]).abs().mean(dim=(-2, -1))
                          for c in candidates])                      # (18, B, C)
    return float(errors.min(0).values.max())


def test_centred_transform_is_the_operator_and_invertible():
    op = build_operator("phase_retrieval", sigma=0.0, resolution=RES, oversample=2.0)
    x = synthetic()
    grid = torch.nn.functional.pad(x * 0.5 + 0.5, (op.pad,) * 4)
    torch.testing.assert_close(centred_fft(grid.to(torch.complex64)).abs(), op(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(centred_ifft(centred_fft(grid.to(torch.complex64))).real, grid, atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noiseless_recovery_up_to_the_ambiguities(seed):
    """A 16×16 draw of the demo prior (clipped to [−1, 1]), oversampling 2 (pad 4), no noise: the kept restarts fit
    the magnitudes to 0.5 % (observed ≤ 0.08 %) and land, per channel, on the image up to the ambiguities within
    0.05 mean absolute error in [0, 1] units (observed 0.017–0.030: at 16 px and oversampling 2.25 the magnitudes
    leave small residual non-uniqueness)."""
    op = build_operator("phase_retrieval", sigma=0.0, resolution=RES, oversample=2.0)
    model = demo_prior(GaussianPrior, RES)
    truth = model.sample([make_generator(seed, "truth")]).clamp(-1, 1)
    y = op(truth)
    out = HIO(num_steps=500, er_steps=100, restarts=8).sample(model, op, y, generators=[make_generator(0)]).samples
    assert float((op(out) - y).norm() / y.norm()) < 0.005
    assert ambiguity_error(out, truth, op.pad) < 0.05


def test_no_network_calls_and_phase_retrieval_only():
    model = demo_prior(GaussianPrior, RES)
    op = build_operator("phase_retrieval", sigma=0.05, resolution=RES, oversample=2.0)
    with count_calls(model) as counts:
        HIO(num_steps=5, er_steps=1, restarts=2).sample(model, op, op(synthetic()), generators=[make_generator(0)])
    assert counts["nfe"] == 0
    assert unsupported(HIO, model, op) is None
    for task in (dict(name="down_sampling", scale_factor=4), dict(name="high_dynamic_range")):
        assert "fourier_magnitude" in unsupported(HIO, model, build_operator(resolution=RES, **task))
    assert "pixel" in unsupported(HIO, demo_prior(resolution=RES), op)


def test_batch_size_invariance_and_determinism():
    model = demo_prior(GaussianPrior, RES)
    op = build_operator("phase_retrieval", sigma=0.05, resolution=RES, oversample=2.0)
    y = op.measure(synthetic(), [make_generator(0, "n")])
    assert_copies_batch_invariant(HIO(num_steps=30, er_steps=5, restarts=3), model, op, y)


def test_setting_refusals():
    for key, value in (("num_steps", 0), ("er_steps", -1), ("beta", 0.0), ("beta", 1.5), ("restarts", 0)):
        with pytest.raises(SettingError, match=key):
            HIO(**{key: value})


def test_cli_run_on_the_demo_and_resume(tmp_path, capsys):
    saved = run_and_resume(tmp_path, "hio", "phase_retrieval", 20, capsys)
    assert saved["restarts"] == 4 and saved["beta"] == 0.9
