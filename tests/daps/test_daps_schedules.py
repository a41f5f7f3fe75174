"""DAPS schedules and step sizes against the reference numbers (tests/fixtures/schedules.json)."""
import torch

from common.models.schedules import annealing_sigmas, edm_time_steps, vp_sigma_to_t, vp_t_to_sigma
from daps.mcmc import MCMCSampler
from tests.helpers.fixtures import load_fixture

S = load_fixture("schedules.json")


def test_annealing_sigmas_equal_reference():
    ref = S["annealing"]
    cfg = ref["constructor"]
    sigmas = annealing_sigmas(cfg["num_steps"], cfg["sigma_max"], cfg["sigma_min"])
    assert sigmas.dtype == torch.float32 and len(sigmas) == ref["len_sigma_steps"]
    assert torch.equal(sigmas, torch.tensor(ref["sigma_steps"], dtype=torch.float32))
    grid = edm_time_steps(cfg["num_steps"], cfg["sigma_max"], cfg["sigma_min"])
    torch.testing.assert_close(grid, torch.tensor(ref["time_steps_float64"], dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_inner_pfode_grids_equal_reference():
    for entry in S["diffusion"].values():
        cfg = entry["constructor"]
        grid = edm_time_steps(cfg["num_steps"], torch.tensor(cfg["sigma_max"], dtype=torch.float32), cfg["sigma_min"])
        assert torch.equal(grid.double(), torch.tensor(entry["pfode_time_grid_float64"], dtype=torch.float64))


def test_mcmc_step_size_schedule():
    ref = S["mcmc_get_lr"]
    mcmc = MCMCSampler(**ref["constructor"])
    for ratio, lr in ref["at_ratio"].items():
        assert abs(mcmc.step_size(float(ratio)) - lr) < 1e-15
    for step, lr in ref["at_daps_step"].items():  # DAPS uses ratio = step / (N + 1), N = 200
        assert abs(mcmc.step_size(int(step) / 201) - lr) < 1e-15


def test_vp_sigma_time_map():
    ref = S["vpprecond"]
    sigma = torch.tensor(ref["sigma"])
    torch.testing.assert_close(vp_sigma_to_t(sigma), torch.tensor(ref["sigma_inv_t"]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close((1000 - 1) * vp_sigma_to_t(sigma), torch.tensor(ref["c_noise"]), rtol=1e-5, atol=1e-4)
    for t, s in ref["sigma_of_t"].items():
        assert abs(float(vp_t_to_sigma(torch.tensor(float(t)))) - s) < 1e-4 * max(1, s)


def test_bad_mcmc_settings_are_refused():
    import pytest
    with pytest.raises(ValueError, match="mc_algo='gibbs'.*langevin, hmc, mh"):
        MCMCSampler(num_steps=1, lr=1e-4, mc_algo="gibbs")
    with pytest.raises(ValueError, match="lr_min_ratio"):
        MCMCSampler(num_steps=1, lr=1e-4, lr_min_ratio=0.0)
