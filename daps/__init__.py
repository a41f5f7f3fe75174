"""Decoupled Annealing Posterior Sampling (Zhang et al., CVPR 2025): the annealing loop lives in
:mod:`daps.sampler`, the MCMC kernels in :mod:`daps.mcmc`, the PF-ODE x̂0 estimate in :mod:`daps.pfode`."""
from daps.sampler import DAPS  # noqa: F401  (registers edm_daps, latent_edm_daps, sd_edm_daps)
